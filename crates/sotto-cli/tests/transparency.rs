//! Key transparency against a compelled operator, with real server processes and the
//! `sotto` binary: the swap of an account before someone's first message to it.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use common::*;
use rusqlite::{Connection, params};
use std::path::Path;

/// What the operator copies from one server's database to another's: an account as its
/// registration stored it, devices and KeyPackages included.
struct Rows {
    identity_key: Vec<u8>,
    body: Vec<u8>,
    signature: Vec<u8>,
    devices: Vec<(String, Vec<u8>)>,
    key_packages: Vec<(String, Vec<u8>)>,
    last_resort: Vec<(String, Vec<u8>)>,
}

fn read_account(db: &Path, user: &str) -> Rows {
    let db = Connection::open(db).unwrap();
    let (identity_key, body, signature) = db
        .query_row(
            "SELECT identity_key, device_list_body, device_list_signature FROM accounts
             WHERE user = ?1",
            [user],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let pairs = |sql: &str| -> Vec<(String, Vec<u8>)> {
        let mut stmt = db.prepare(sql).unwrap();
        stmt.query_map([user], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    Rows {
        identity_key,
        body,
        signature,
        devices: pairs("SELECT device, signature_key FROM devices WHERE user = ?1"),
        key_packages: pairs("SELECT device, data FROM key_packages WHERE user = ?1"),
        last_resort: pairs("SELECT device, data FROM last_resort_key_packages WHERE user = ?1"),
    }
}

/// The operator makes `user`'s account on the running server the one in `rows` (keys it
/// holds), devices and KeyPackages included, in one transaction. It does not publish the
/// change in the key-transparency log: the queue entry the database makes for the changed
/// device list is deleted before anything can publish it.
fn swap_account(db: &Path, user: &str, rows: &Rows) {
    let mut db = Connection::open(db).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let db = db.transaction().unwrap();
    for table in ["devices", "key_packages", "last_resort_key_packages"] {
        db.execute(&format!("DELETE FROM {table} WHERE user = ?1"), [user])
            .unwrap();
    }
    db.execute(
        "UPDATE accounts SET identity_key = ?1, device_list_body = ?2,
         device_list_signature = ?3 WHERE user = ?4",
        params![rows.identity_key, rows.body, rows.signature, user],
    )
    .unwrap();
    for (device, key) in &rows.devices {
        db.execute(
            "INSERT INTO devices (user, device, signature_key) VALUES (?1, ?2, ?3)",
            params![user, device, key],
        )
        .unwrap();
    }
    for (device, data) in &rows.key_packages {
        db.execute(
            "INSERT INTO key_packages (user, device, data) VALUES (?1, ?2, ?3)",
            params![user, device, data],
        )
        .unwrap();
    }
    for (device, data) in &rows.last_resort {
        db.execute(
            "INSERT INTO last_resort_key_packages (user, device, data) VALUES (?1, ?2, ?3)",
            params![user, device, data],
        )
        .unwrap();
    }
    db.execute("DELETE FROM kt_pending WHERE user = ?1", [user])
        .unwrap();
    db.commit().unwrap();
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn an_account_swapped_before_first_contact_is_refused_and_once_logged_raises_its_owners_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"));
    let db = server.sqlite_file();
    let erin = dir.path().join("erin");
    let bob = dir.path().join("bob");
    ok(
        &erin,
        &["init", "--server", &server.url(), "--user", "erin"],
    );
    ok(&bob, &["init", "--server", &server.url(), "--user", "bob"]);
    ok(&bob, &["recv"]);
    wait_published(&db);

    // The operator makes a "bob" of its own on a server of its own, and copies it over the
    // real one's account before erin's first message to bob.
    let elsewhere = ServerProcess::start(&dir.path().join("elsewhere"));
    let mallory = dir.path().join("mallory");
    ok(
        &mallory,
        &["init", "--server", &elsewhere.url(), "--user", "bob"],
    );
    let forged = read_account(&elsewhere.sqlite_file(), "bob");
    let real = read_account(&db, "bob");
    swap_account(&db, "bob", &forged);

    // 1. Not in the log: erin refuses, with exit 3, and nothing is sent.
    let out = run(&erin, &["send", "bob", "for bob only"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("bob"), "{stderr}");
    assert!(stderr.contains("key-transparency log"), "{stderr}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM messages"), 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM groups"), 0);
    let forged_device = &forged.devices[0].0;
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM key_packages WHERE device = '{forged_device}'")
        ),
        i64::try_from(forged.key_packages.len()).unwrap(),
        "none of the attacker's KeyPackages was claimed"
    );

    // 2. The operator publishes the swap, and lets bob's real device sign in still, so that
    // he notices nothing. His device raises the alarm (exit 3 until recv has shown it).
    let db_conn = Connection::open(&db).unwrap();
    db_conn
        .execute("INSERT INTO kt_pending (user) VALUES ('bob')", [])
        .unwrap();
    for (device, key) in &real.devices {
        db_conn
            .execute(
                "INSERT INTO devices (user, device, signature_key) VALUES ('bob', ?1, ?2)",
                params![device, key],
            )
            .unwrap();
    }
    wait_published(&db);
    let out = run(&bob, &["send", "erin", "hello erin"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("none of your devices made"), "{stderr}");
    assert_eq!(run(&bob, &["whoami"]).status.code(), Some(3));
    let shown = ok_or_3(&bob, &["recv", "--json"]);
    assert!(shown.contains("none of your devices made"), "{shown}");
    assert_eq!(run(&bob, &["whoami"]).status.code(), Some(0));
}

/// Waits until the server's publisher has emptied its queue into the log.
fn wait_published(db: &Path) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while count(db, "SELECT COUNT(*) FROM kt_pending") > 0 {
        assert!(std::time::Instant::now() < deadline, "never published");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `sotto ARGS`'s stdout when it exits 0 or 3.
fn ok_or_3(home: &Path, args: &[&str]) -> String {
    let out = run(home, args);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn verify_shows_both_sides_one_safety_number_and_confirm_marks_the_contact_verified() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"));
    let (alice, bob) = alice_and_bob(&server, dir.path());
    let json = |home: &Path, args: &[&str]| -> serde_json::Value {
        serde_json::from_str(ok(home, args).trim()).unwrap()
    };
    let of_bob = json(&alice, &["verify", "bob", "--json"]);
    let of_alice = json(&bob, &["verify", "alice", "--json"]);
    let number = of_bob["safety_number"].as_str().unwrap().to_owned();
    assert_eq!(number.len(), 60);
    assert_eq!(of_alice["safety_number"], number.as_str());
    assert_eq!(of_bob["verified"], false);
    assert!(of_bob["kt_epoch"].as_u64().unwrap() >= 1);

    // For a person: the digits in groups of five, a QR code, and what to do next.
    let shown = ok(&alice, &["verify", "bob"]);
    assert!(shown.contains(&number[..5]), "{shown}");
    assert!(shown.contains('█') || shown.contains('▀'), "{shown}");
    assert!(
        shown.contains("sotto verify bob --confirm NUMBER"),
        "{shown}"
    );

    // A number that is not theirs is refused (exit 3) and marks nothing.
    let wrong = format!(
        "{}{}",
        &number[..59],
        if number.ends_with('0') { '1' } else { '0' }
    );
    let out = run(&alice, &["verify", "bob", "--confirm", &wrong]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        json(&alice, &["verify", "bob", "--json"])["verified"],
        false
    );
    // Typed as it is shown, with spaces.
    let spaced: Vec<&str> = (0..12).map(|i| &number[i * 5..i * 5 + 5]).collect();
    ok(&alice, &["verify", "bob", "--confirm", &spaced.join(" ")]);
    assert_eq!(json(&alice, &["verify", "bob", "--json"])["verified"], true);
}
