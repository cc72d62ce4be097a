//! The outbox in SQLite: each entry with its idempotency key, the request as sent (JSON) and
//! what it sends (JSON: the content of a message, or the membership change of a commit).

use super::{group_id, integer, unsigned};
use rusqlite::{Connection, OptionalExtension as _, params};
use sotto_core::StoreError;
use sotto_core::store::{OutboxEntry, OutboxRecord, Outgoing};

pub(super) fn put(conn: &Connection, e: &OutboxRecord) -> Result<(), StoreError> {
    let (kind, content) = match &e.outgoing {
        Outgoing::Message(content) => ("app", serde_json::to_string(content)?),
        Outgoing::Commit(change) => ("commit", serde_json::to_string(change)?),
    };
    conn.prepare_cached(
        "INSERT INTO outbox (client_id, group_id, kind, request, content, created_at, counter)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        e.client_id,
        e.group.as_bytes(),
        kind,
        serde_json::to_string(&e.request)?,
        content,
        integer(e.created_at),
        e.counter.map(integer)
    ])?;
    Ok(())
}

type Row = (
    String,
    Vec<u8>,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
);

/// Every entry, oldest first; one that does not decode comes back as damaged, so that it
/// cannot block the others.
pub(super) fn all(conn: &Connection) -> Result<Vec<OutboxEntry>, StoreError> {
    let rows: Vec<Row> = conn
        .prepare_cached(
            "SELECT client_id, group_id, kind, request, content, created_at, counter
             FROM outbox ORDER BY created_at, rowid",
        )?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let client_id = row.0.clone();
            decode(row).map_or_else(
                |e| OutboxEntry::Damaged {
                    client_id,
                    reason: e.to_string(),
                },
                |record| OutboxEntry::Ready(Box::new(record)),
            )
        })
        .collect())
}

fn decode(
    (client_id, group, kind, request, content, created_at, counter): Row,
) -> Result<OutboxRecord, StoreError> {
    let content = content.as_deref().unwrap_or("null");
    let outgoing = match kind.as_str() {
        "app" => Outgoing::Message(serde_json::from_str(content)?),
        "commit" => Outgoing::Commit(serde_json::from_str(content)?),
        other => return Err(StoreError::new(format!("unknown outbox kind {other:?}"))),
    };
    Ok(OutboxRecord {
        client_id,
        group: group_id(&group)?,
        request: serde_json::from_str(&request)?,
        outgoing,
        created_at: unsigned(created_at),
        counter: counter.map(unsigned),
    })
}

pub(super) fn remove(conn: &Connection, client_id: &str) -> rusqlite::Result<Option<u64>> {
    let at: Option<i64> = conn
        .prepare_cached("DELETE FROM outbox WHERE client_id = ?1 RETURNING created_at")?
        .query_row([client_id], |r| r.get(0))
        .optional()?;
    Ok(at.map(unsigned))
}
