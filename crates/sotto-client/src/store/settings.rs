//! The account's settings on this device (`meta`) and the identity keys pinned for contacts.

use rusqlite::{Connection, OptionalExtension as _, params};
use sotto_core::StoreError;
use sotto_core::store::{Contact, Setting};
use sotto_proto::Username;

pub(super) fn get(conn: &Connection, key: Setting) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key.as_str()], |r| r.get(0))
        .optional()
}

pub(super) fn set(conn: &Connection, key: Setting, value: &[u8]) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key.as_str(), value])?;
    Ok(())
}

pub(super) fn contact(conn: &Connection, user: &Username) -> rusqlite::Result<Option<Contact>> {
    conn.prepare_cached("SELECT identity_key, verified FROM contacts WHERE user = ?1")?
        .query_row([user.as_str()], |r| {
            Ok(Contact {
                identity_key: r.get(0)?,
                verified: r.get::<_, i64>(1)? != 0,
            })
        })
        .optional()
}

pub(super) fn contacts(conn: &Connection) -> Result<Vec<(Username, Contact)>, StoreError> {
    let rows: Vec<(String, Vec<u8>, i64)> = conn
        .prepare_cached("SELECT user, identity_key, verified FROM contacts ORDER BY user")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(user, identity_key, verified)| {
            Ok((
                super::username(&user)?,
                Contact {
                    identity_key,
                    verified: verified != 0,
                },
            ))
        })
        .collect()
}

pub(super) fn pin_identity(
    conn: &Connection,
    user: &Username,
    key: &[u8],
    at: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO contacts (user, identity_key, first_seen) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![user.as_str(), key, super::integer(at)])?;
    Ok(())
}

pub(super) fn replace_identity(
    conn: &Connection,
    user: &Username,
    key: &[u8],
    at: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO contacts (user, identity_key, first_seen, verified) VALUES (?1, ?2, ?3, 0)
         ON CONFLICT (user) DO UPDATE SET identity_key = excluded.identity_key, verified = 0",
    )?
    .execute(params![user.as_str(), key, super::integer(at)])?;
    Ok(())
}

pub(super) fn mark_verified(
    conn: &Connection,
    user: &Username,
    key: &[u8],
) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached("UPDATE contacts SET verified = 1 WHERE user = ?1 AND identity_key = ?2")?
        .execute(params![user.as_str(), key])?;
    Ok(changed == 1)
}
