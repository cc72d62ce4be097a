//! The history in SQLite (`messages`), and the ids of processed server messages.
//!
//! Events and security events are stored as data in the `event` column (JSON); their words
//! are chosen when they are shown. Entries an earlier version stored keep their text in
//! `body` and are read back as such.

use super::{group_id, integer, unsigned, username};
use rusqlite::{Connection, OptionalExtension as _, params};
use sotto_core::StoreError;
use sotto_core::events::Event;
use sotto_core::store::{HistoryItem, HistoryRecord, Unshown, UnshownEntry};
use sotto_proto::{DeviceAddr, DeviceId, Username};

/// What a security entry keeps besides its reason.
#[derive(serde::Serialize, serde::Deserialize)]
struct SecurityDetail {
    from: Option<Username>,
}

pub(super) fn add(conn: &Connection, e: &HistoryRecord) -> Result<bool, StoreError> {
    let (kind, body, event) = match &e.item {
        HistoryItem::Text(text) => ("text", text.as_str(), None),
        HistoryItem::Event(event) => ("event", "", Some(serde_json::to_string(event)?)),
        HistoryItem::Security { from, reason } => (
            "security",
            reason.as_str(),
            Some(serde_json::to_string(&SecurityDetail {
                from: from.clone(),
            })?),
        ),
    };
    let (user, device, verified) = match &e.sender {
        Some((s, verified)) => (Some(s.user.as_str()), Some(s.device.to_string()), *verified),
        None => (None, None, true),
    };
    let added = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO messages (id, group_id, sender_user, sender_device,
         sender_verified, sent_at, received_at, kind, body, event, outgoing, shown)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
        )?
        .execute(params![
            e.id,
            e.group.as_ref().map(|g| g.as_bytes()),
            user,
            device,
            verified,
            integer(e.sent_at),
            integer(e.received_at),
            kind,
            body,
            event,
            e.outgoing
        ])?;
    Ok(added > 0)
}

/// The entry a row holds. An event that does not decode (damaged, or from a later version)
/// is shown as one this version cannot describe rather than hiding every other entry.
fn item(kind: &str, body: String, event: Option<String>) -> Result<HistoryItem, StoreError> {
    Ok(match (kind, event) {
        ("text", _) => HistoryItem::Text(body),
        ("event", Some(json)) => {
            HistoryItem::Event(serde_json::from_str(&json).unwrap_or(Event::Unknown))
        }
        ("event", None) => HistoryItem::Event(Event::Earlier { text: body }),
        ("security", detail) => HistoryItem::Security {
            // The reason is what matters; a sender that does not decode is left out.
            from: detail
                .and_then(|json| serde_json::from_str::<SecurityDetail>(&json).ok())
                .and_then(|d| d.from),
            reason: body,
        },
        (other, _) => {
            return Err(StoreError::new(format!("unknown history kind {other:?}")));
        }
    })
}

type Row = (
    i64,
    String,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
    i64,
    i64,
    String,
    String,
    Option<String>,
    bool,
);

pub(super) fn unshown(conn: &Connection, which: Unshown) -> Result<Vec<UnshownEntry>, StoreError> {
    entries(
        conn,
        match which {
            Unshown::All => "m.shown = 0",
            Unshown::Security => "m.shown = 0 AND m.kind = 'security'",
        },
    )
}

pub(super) fn all(conn: &Connection) -> Result<Vec<HistoryRecord>, StoreError> {
    Ok(entries(conn, "1 = 1")?
        .into_iter()
        .map(|e| e.record)
        .collect())
}

/// The entries `filter` (an SQL condition on `m`, a constant of this file) selects.
fn entries(conn: &Connection, filter: &str) -> Result<Vec<UnshownEntry>, StoreError> {
    let rows: Vec<Row> = conn
        .prepare_cached(&format!(
            "SELECT m.local_id, m.id, m.group_id, c.name, c.peer, m.sender_user, m.sender_device,
                    m.sender_verified, m.sent_at, m.received_at, m.kind, m.body, m.event,
                    m.outgoing
             FROM messages m LEFT JOIN conversations c ON c.group_id = m.group_id
             WHERE {filter} ORDER BY m.local_id"
        ))?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
                r.get(13)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(
            |(
                position,
                id,
                group,
                name,
                peer,
                user,
                device,
                verified,
                sent,
                received,
                kind,
                body,
                event,
                outgoing,
            )| {
                let sender = match (user, device) {
                    (Some(user), Some(device)) => Some((
                        DeviceAddr {
                            user: username(&user)?,
                            device: DeviceId::parse(&device)
                                .map_err(|_| StoreError::new("damaged device id"))?,
                        },
                        verified,
                    )),
                    _ => None,
                };
                Ok(UnshownEntry {
                    position,
                    record: HistoryRecord {
                        id,
                        group: group.as_deref().map(group_id).transpose()?,
                        sender,
                        sent_at: unsigned(sent),
                        received_at: unsigned(received),
                        item: item(&kind, body, event)?,
                        outgoing,
                    },
                    group_name: name,
                    peer,
                })
            },
        )
        .collect()
}

pub(super) fn mark_shown(conn: &Connection, position: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE messages SET shown = 1 WHERE shown = 0 AND local_id <= ?1")?
        .execute([position])?;
    Ok(())
}

pub(super) fn is_processed(conn: &Connection, id: u64) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM processed WHERE server_id = ?1")?
        .query_row([integer(id)], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(super) fn mark_processed(conn: &Connection, id: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO processed (server_id) VALUES (?1)")?
        .execute([integer(id)])?;
    Ok(())
}
