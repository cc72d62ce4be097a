//! What this device keeps to catch a lying server: the last counter of each sender's messages
//! in each group, the key-transparency roots it verified or that members vouched for, and the
//! device lists it proved the log to hold, with the epoch.

use super::{integer, unsigned};
use rusqlite::{Connection, OptionalExtension as _, params};
use sotto_core::StoreError;
use sotto_core::store::{KeptRoot, LOG_ROOTS_KEPT};
use sotto_proto::{DeviceAddr, GroupId, Username};

pub(super) fn counter(
    conn: &Connection,
    group: &GroupId,
    sender: &DeviceAddr,
) -> rusqlite::Result<Option<u64>> {
    let n: Option<i64> = conn
        .prepare_cached(
            "SELECT counter FROM counters WHERE group_id = ?1 AND user = ?2 AND device = ?3",
        )?
        .query_row(
            params![
                group.as_bytes(),
                sender.user.as_str(),
                sender.device.to_string()
            ],
            |r| r.get(0),
        )
        .optional()?;
    Ok(n.map(unsigned))
}

pub(super) fn set_counter(
    conn: &Connection,
    group: &GroupId,
    sender: &DeviceAddr,
    counter: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO counters (group_id, user, device, counter) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (group_id, user, device) DO UPDATE SET counter = excluded.counter",
    )?
    .execute(params![
        group.as_bytes(),
        sender.user.as_str(),
        sender.device.to_string(),
        integer(counter)
    ])?;
    Ok(())
}

pub(super) fn forget(
    conn: &Connection,
    group: &GroupId,
    keep: &DeviceAddr,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM counters WHERE group_id = ?1 AND NOT (user = ?2 AND device = ?3)",
    )?
    .execute(params![
        group.as_bytes(),
        keep.user.as_str(),
        keep.device.to_string()
    ])?;
    Ok(())
}

type RootRow = (Vec<u8>, Option<String>, Option<String>);

pub(super) fn log_root(conn: &Connection, epoch: u64) -> Result<Option<KeptRoot>, StoreError> {
    let row: Option<RootRow> = conn
        .prepare_cached(
            "SELECT root, vouched_user, vouched_device FROM log_roots WHERE epoch = ?1",
        )?
        .query_row([integer(epoch)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    row.map(kept_root).transpose()
}

pub(super) fn unchecked_vouched_roots(
    conn: &Connection,
    up_to: u64,
    limit: usize,
) -> Result<Vec<(u64, KeptRoot)>, StoreError> {
    let mut get = conn.prepare_cached(
        "SELECT epoch, root, vouched_user, vouched_device FROM log_roots
         WHERE vouched_user IS NOT NULL AND checked = 0 AND epoch <= ?1
         ORDER BY unanswered_since IS NOT NULL, epoch LIMIT ?2",
    )?;
    let rows = get.query_map(
        params![integer(up_to), i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| Ok((r.get::<_, i64>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))),
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (epoch, row) = row?;
        out.push((unsigned(epoch), kept_root(row)?));
    }
    Ok(out)
}

pub(super) fn mark_vouched_root_checked(conn: &Connection, epoch: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE log_roots SET checked = 1 WHERE epoch = ?1")?
        .execute([integer(epoch)])?;
    Ok(())
}

pub(super) fn vouched_root_unanswered(
    conn: &Connection,
    epoch: u64,
    now: u64,
    gap: u64,
) -> rusqlite::Result<(u64, u64)> {
    // Every expression reads the row as it was before the update.
    let row: Option<(i64, i64)> = conn
        .prepare_cached(
            "UPDATE log_roots SET unanswered_since = COALESCE(unanswered_since, ?2),
                 unanswered_tries = unanswered_tries
                     + (unanswered_last IS NULL OR ?2 - unanswered_last >= ?3),
                 unanswered_last = CASE WHEN unanswered_last IS NULL
                     OR ?2 - unanswered_last >= ?3 THEN ?2 ELSE unanswered_last END
             WHERE epoch = ?1 RETURNING unanswered_since, unanswered_tries",
        )?
        .query_row(params![integer(epoch), integer(now), integer(gap)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(row.map_or((now, 1), |(since, tries)| {
        (unsigned(since), unsigned(tries))
    }))
}

fn kept_root((root, user, device): RootRow) -> Result<KeptRoot, StoreError> {
    let damaged = || StoreError::new("a stored log root is damaged");
    let root = <[u8; 32]>::try_from(root).map_err(|_| damaged())?;
    let vouched_by = match (user, device) {
        (Some(user), Some(device)) => Some(DeviceAddr {
            user: super::username(&user)?,
            device: sotto_proto::DeviceId::parse(&device).map_err(|_| damaged())?,
        }),
        (None, None) => None,
        _ => return Err(damaged()),
    };
    Ok(KeptRoot { root, vouched_by })
}

pub(super) fn put_log_root(
    conn: &Connection,
    epoch: u64,
    root: &[u8; 32],
    vouched_by: Option<&DeviceAddr>,
) -> rusqlite::Result<()> {
    // A root this device verified replaces one a member vouched for; nothing else replaces a
    // kept root.
    let added = conn
        .prepare_cached(
            "INSERT INTO log_roots (epoch, root, vouched_user, vouched_device)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (epoch) DO UPDATE SET root = excluded.root, vouched_user = NULL,
                 vouched_device = NULL
             WHERE excluded.vouched_user IS NULL AND log_roots.vouched_user IS NOT NULL",
        )?
        .execute(params![
            integer(epoch),
            &root[..],
            vouched_by.map(|d| d.user.as_str()),
            vouched_by.map(|d| d.device.to_string())
        ])?;
    if added > 0 {
        // The newest of each kind: roots members vouched for cannot push out verified ones.
        conn.prepare_cached(
            "DELETE FROM log_roots WHERE (vouched_user IS NULL) = (?2 IS NULL) AND epoch NOT IN
                 (SELECT epoch FROM log_roots WHERE (vouched_user IS NULL) = (?2 IS NULL)
                  ORDER BY epoch DESC LIMIT ?1)",
        )?
        .execute(params![
            i64::try_from(LOG_ROOTS_KEPT).unwrap_or(i64::MAX),
            vouched_by.map(|d| d.user.as_str())
        ])?;
    }
    Ok(())
}

pub(super) fn logged_list(
    conn: &Connection,
    user: &Username,
) -> rusqlite::Result<Option<(u64, Vec<u8>)>> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT epoch, body FROM logged_lists WHERE user = ?1")?
        .query_row([user.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.map(|(epoch, body)| (unsigned(epoch), body)))
}

pub(super) fn set_logged_list(
    conn: &Connection,
    user: &Username,
    epoch: u64,
    body: &[u8],
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO logged_lists (user, epoch, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (user) DO UPDATE SET epoch = excluded.epoch, body = excluded.body",
    )?
    .execute(params![user.as_str(), integer(epoch), body])?;
    Ok(())
}
