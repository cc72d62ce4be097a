//! Conversations in SQLite: what each MLS group is to the user.

use super::{group_id, integer, unsigned, username};
use rusqlite::{Connection, OptionalExtension as _, params};
use sotto_core::StoreError;
use sotto_core::store::ConversationRecord;
use sotto_proto::{GroupId, Username};

const GET: &str = "SELECT group_id, name, peer, announced, active, created_at FROM conversations
                   WHERE group_id = ?1";
const ALL: &str = "SELECT group_id, name, peer, announced, active, created_at FROM conversations
                   ORDER BY created_at, rowid";

type Row = (Vec<u8>, Option<String>, Option<String>, bool, bool, i64);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn record(
    (group, name, peer, announced, active, created_at): Row,
) -> Result<ConversationRecord, StoreError> {
    Ok(ConversationRecord {
        group: group_id(&group)?,
        name,
        peer: peer.as_deref().map(username).transpose()?,
        announced,
        active,
        created_at: unsigned(created_at),
    })
}

pub(super) fn get(
    conn: &Connection,
    group: &GroupId,
) -> Result<Option<ConversationRecord>, StoreError> {
    let found = conn
        .prepare_cached(GET)?
        .query_row([group.as_bytes()], row)
        .optional()?;
    found.map(record).transpose()
}

pub(super) fn all(conn: &Connection) -> Result<Vec<ConversationRecord>, StoreError> {
    let rows: Vec<Row> = conn
        .prepare_cached(ALL)?
        .query_map([], row)?
        .collect::<Result<_, _>>()?;
    rows.into_iter().map(record).collect()
}

pub(super) fn upsert(conn: &Connection, c: &ConversationRecord) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO conversations (group_id, name, peer, announced, active, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (group_id) DO UPDATE SET active = 1, announced = 0",
    )?
    .execute(params![
        c.group.as_bytes(),
        c.name,
        c.peer.as_ref().map(Username::as_str),
        c.announced,
        c.active,
        integer(c.created_at)
    ])?;
    Ok(())
}

pub(super) fn describe(
    conn: &Connection,
    group: &GroupId,
    name: Option<&str>,
    peer: Option<&Username>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE conversations SET name = ?2, peer = ?3, announced = 1 WHERE group_id = ?1",
    )?
    .execute(params![group.as_bytes(), name, peer.map(Username::as_str)])?;
    Ok(())
}

pub(super) fn deactivate(conn: &Connection, group: &GroupId) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE conversations SET active = 0 WHERE group_id = ?1")?
        .execute([group.as_bytes()])?;
    Ok(())
}

pub(super) fn unhealed_since(conn: &Connection, cutoff: u64) -> Result<Vec<GroupId>, StoreError> {
    let ids: Vec<Vec<u8>> = conn
        .prepare_cached(
            "SELECT group_id FROM conversations
             WHERE active = 1 AND COALESCE(healed_at, created_at) <= ?1
             ORDER BY created_at, rowid",
        )?
        .query_map([integer(cutoff)], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    ids.iter().map(|id| group_id(id)).collect()
}

pub(super) fn set_healed_at(conn: &Connection, group: &GroupId, at: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE conversations SET healed_at = ?2 WHERE group_id = ?1")?
        .execute(params![group.as_bytes(), integer(at)])?;
    Ok(())
}
