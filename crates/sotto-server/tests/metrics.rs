//! `/metrics` on its own listener: request counts per route template, the group committer's
//! transactions and changes, open sockets; and never a user's or a group's name.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use sotto_server::Config;

#[tokio::test]
async fn metrics_count_requests_by_route_and_commits_and_name_no_one() {
    let mut state = None;
    let s = common::start_shaped(Config::default(), |st| {
        state = Some(st.clone());
        st
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(sotto_server::serve_metrics(
        listener,
        state.unwrap(),
        std::future::pending(),
    ));
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    s.send_small(&alice, [9; 16], 1, &[&bob]).await;
    s.send_small(&alice, [9; 16], 2, &[&bob]).await;
    let _socket = common::websocket(&s, &bob.token).await;

    let response = s.http.get(&metrics_url).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let text = response.text().await.unwrap();
    for line in [
        r#"sotto_http_requests_total{method="POST",route="/v1/groups/{group_id}/messages",status="201"} 2"#,
        r#"sotto_http_requests_total{method="POST",route="/v1/accounts",status="201"} 2"#,
        "sotto_commit_transactions_total 2",
        "sotto_commit_changes_total 2",
        "sotto_commit_batch_size_count 2",
        "sotto_push_sockets 1",
        "sotto_queue_entries 2",
        "sotto_stored_messages 2",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(text.contains("sotto_http_request_duration_seconds_bucket{"));
    for name in ["alice", "bob", &common::hex_of(&[9; 16])] {
        assert!(!text.contains(name), "the metrics name {name:?}");
    }
    // The API's own listener has no such route.
    let (status, _) = s.get("/metrics", None).await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
}
