//! `sotto devices` with real server processes and the `sotto` binary: a device linked with
//! its history joins the conversations and everyone sees it; the device limit; when the
//! server last saw each device.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use common::*;
use std::process::Stdio;

/// Starts `devices link --json` for alice in `home` (with `extra` arguments); returns the
/// waiting process, its output lines and the code it printed first.
fn start_linking(
    home: &std::path::Path,
    server: &ServerProcess,
    extra: &[&str],
) -> (std::process::Child, Lines, String) {
    let url = server.url();
    let mut args = vec![
        "devices", "link", "--server", &url, "--user", "alice", "--json",
    ];
    args.extend_from_slice(extra);
    let mut child = sotto(home, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Lines::of(child.stdout.take().unwrap());
    let first: serde_json::Value = serde_json::from_str(&out.wait_for("code")).unwrap();
    let code = first["code"].as_str().unwrap().to_owned();
    (child, out, code)
}

#[test]
fn a_device_linked_from_the_command_line_joins_the_conversations_and_once_removed_is_served_no_more()
 {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"));
    let (alice, bob) = alice_and_bob(&server, dir.path());
    ok(&alice, &["send", "bob", "before the laptop"]);
    ok(&bob, &["recv"]);
    ok(&bob, &["send", "alice", "hello alice"]);
    ok(&alice, &["recv"]);

    // The new device prints its code as its first line, then waits for the approval.
    let laptop = dir.path().join("laptop");
    let (mut linking, out, code) = start_linking(&laptop, &server, &["--name", "laptop"]);
    assert_eq!(code.len(), 44, "{code}");

    // Approving needs no prompt when stdin is not a terminal, and warns.
    let approved = run(&alice, &["devices", "approve", &code, "--json"]);
    let stderr = String::from_utf8_lossy(&approved.stderr).into_owned();
    assert!(approved.status.success(), "{stderr}");
    assert!(
        stderr.contains("Never approve a code someone sent you"),
        "{stderr}"
    );
    let approved: serde_json::Value = serde_json::from_slice(&approved.stdout).unwrap();
    assert_eq!(approved["name"], "laptop");
    assert_eq!(approved["conversations"], 1);

    let linked: serde_json::Value = serde_json::from_str(&out.wait_for("device")).unwrap();
    assert_eq!(linked["user"], "alice");
    assert_eq!(linked["contacts"], 1);
    assert!(linked["history"].as_u64().unwrap() >= 2);
    assert!(linking.wait().unwrap().success());
    // A second approval of the same code finds nothing: codes work once.
    let again = run(&alice, &["devices", "approve", &code]);
    assert_eq!(again.status.code(), Some(1));

    // The history is there as history (`recv` does not replay it as news), and so is the
    // conversation: bob's next message reaches both.
    let fresh = json_lines(&ok(&laptop, &["recv", "--json"]));
    let texts: Vec<&str> = fresh.iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(!texts.contains(&"hello alice"), "{texts:?}");
    let seen_by_bob = ok(&bob, &["recv"]);
    assert!(
        seen_by_bob.contains("alice added a device: laptop"),
        "{seen_by_bob}"
    );
    ok(&bob, &["send", "alice", "to both"]);
    for home in [&alice, &laptop] {
        assert!(ok(home, &["recv"]).contains("to both"));
    }
    ok(&laptop, &["send", "bob", "from the laptop"]);
    assert!(ok(&bob, &["recv"]).contains("from the laptop"));

    let listed = json_lines(&ok(&laptop, &["devices", "list", "--json"]));
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed.iter().filter(|d| d["this"] == true).count(),
        1,
        "{listed:?}"
    );
    assert!(
        listed
            .iter()
            .any(|d| d["name"] == "laptop" && d["this"] == true)
    );

    // Removed from the other device: out of the conversation (bob sees it), and the server
    // no longer serves it.
    let id = linked["device"].as_str().unwrap();
    let removed: serde_json::Value =
        serde_json::from_str(&ok(&alice, &["devices", "remove", id, "--json"])).unwrap();
    assert_eq!(removed["conversations"], 1);
    assert!(ok(&bob, &["recv"]).contains("alice removed a device"));
    let gone = run(&laptop, &["send", "bob", "still here?"]);
    assert_eq!(gone.status.code(), Some(2));
    assert_eq!(
        json_lines(&ok(&alice, &["devices", "list", "--json"])).len(),
        1
    );
}

#[test]
fn linking_past_the_servers_device_limit_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_on(
        vec![
            "--data".into(),
            dir.path().join("server").into(),
            "--limit".into(),
            "devices_per_account=1".into(),
        ],
        "127.0.0.1:0",
    );
    let alice = dir.path().join("alice");
    ok(
        &alice,
        &["init", "--server", &server.url(), "--user", "alice"],
    );
    let laptop = dir.path().join("laptop");
    let (mut linking, _out, code) = start_linking(&laptop, &server, &[]);
    let code = code.as_str();
    let refused = run(&alice, &["devices", "approve", code]);
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("as many as this server allows"), "{stderr}");
    let _ = linking.kill();
    let _ = linking.wait();
    assert_eq!(
        json_lines(&ok(&alice, &["devices", "list", "--json"])).len(),
        1
    );
}

#[test]
fn devices_list_shows_when_each_device_last_signed_in_and_one_the_server_no_longer_holds() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"));
    let alice = dir.path().join("alice");
    ok(
        &alice,
        &["init", "--server", &server.url(), "--user", "alice"],
    );
    let laptop = dir.path().join("laptop");
    let (mut linking, out, code) = start_linking(&laptop, &server, &["--name", "laptop"]);
    ok(&alice, &["devices", "approve", &code]);
    let linked: serde_json::Value = serde_json::from_str(&out.wait_for("device")).unwrap();
    assert!(linking.wait().unwrap().success());

    // Each signed in after it was added; the server says when.
    let listed = json_lines(&ok(&alice, &["devices", "list", "--json"]));
    assert_eq!(listed.len(), 2);
    for d in &listed {
        let seen = d["last_seen"].as_u64().unwrap();
        assert!(seen >= d["added_at"].as_u64().unwrap(), "{d}");
        assert_eq!(d["on_server"], true, "{d}");
    }

    // The operator deletes the laptop from the server: the signed list still names it,
    // and the list says the server does not hold it.
    let id = linked["device"].as_str().unwrap();
    let db = rusqlite::Connection::open(server.sqlite_file()).unwrap();
    let deleted = db
        .execute("DELETE FROM devices WHERE device = ?1", [id])
        .unwrap();
    assert_eq!(deleted, 1);
    let plain = ok(&alice, &["devices", "list"]);
    let line = |needle: &str| {
        plain
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{plain}"))
            .to_owned()
    };
    assert!(line(id).ends_with("\tnot on the server"), "{plain}");
    let this = line("(this device)");
    assert!(
        this.contains("\tlast seen ") && this.ends_with(" UTC\t(this device)"),
        "{plain}"
    );
}
