#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
//! What a device leaves on its disk: a home only its owner can read, and no account without
//! a passcode worth the name.

mod harness;

use harness::{Server, client};
use sotto_client::{Client, ClientError, InitOptions, KdfParams};

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_directory_and_its_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), 0x004D).await;
    let alice = client(&server, dir.path(), "alice").await;
    let _bob = client(&server, dir.path(), "bob").await;
    alice.send_text("bob", "hi").await.unwrap();
    let home = dir.path().join("alice");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&home).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    files.sort();
    assert_eq!(
        files,
        ["keyfile.json", "store.db", "store.db-shm", "store.db-wal"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passcodes_shorter_than_six_characters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), 0x004D).await;
    let home = dir.path().join("alice");
    let init = |passcode: &'static str| {
        Client::init(
            &home,
            &server.url,
            "alice",
            passcode,
            InitOptions::new(KdfParams::INSECURE_TEST),
        )
    };
    for short in ["", "12345", "äöü€ß"] {
        let err = init(short).await.unwrap_err();
        assert!(matches!(err, ClientError::Usage(_)), "{short:?}: {err:?}");
        assert!(!home.exists());
    }
    init("123456").await.unwrap();
}
