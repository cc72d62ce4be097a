//! `sotto server --config FILE`: settings from a TOML file, the command line winning over it,
//! and a file with a setting that does not exist refused.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use common::{ServerProcess, run};
use std::path::Path;

/// Whether the server said it keeps its data in `dir`, and did.
fn keeps_data_in(server: &ServerProcess, dir: &Path) -> bool {
    let said = format!("(data in {})", dir.display());
    server.log.all().iter().any(|l| l.contains(&said)) && dir.join("sotto.db").exists()
}

#[test]
fn server_settings_come_from_a_file_and_the_command_line_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let (from_file, from_flag) = (dir.path().join("from-file"), dir.path().join("from-flag"));
    let config = dir.path().join("sotto.toml");
    std::fs::write(
        &config,
        format!(
            "data = {:?}\nlisten = \"127.0.0.1:0\"\nkt_epoch_ms = 200\nkt_epoch_changes = 500\n\n\
             [limit]\nsockets_per_device = \"5\"\n",
            from_file.display().to_string()
        ),
    )
    .unwrap();
    let server = ServerProcess::start_on(
        vec!["--config".into(), config.clone().into()],
        "127.0.0.1:0",
    );
    assert!(keeps_data_in(&server, &from_file), "{:?}", server.log.all());
    drop(server);
    let server = ServerProcess::start_on(
        vec![
            "--config".into(),
            config.into(),
            "--data".into(),
            from_flag.clone().into(),
        ],
        "127.0.0.1:0",
    );
    assert!(keeps_data_in(&server, &from_flag), "{:?}", server.log.all());

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "colour = \"blue\"\n").unwrap();
    let out = run(dir.path(), &["server", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown setting \"colour\""), "{stderr}");
}
