//! The anchor: the same workload through NATS JetStream doing store-and-forward, one durable
//! pull consumer per device on a stream with file storage, at JetStream's default durability
//! (it does not sync every write). Publishers wait for the stream's acknowledgement; each
//! device's consumer acknowledges every message. The NATS server is the machine's, on
//! loopback; the stream is made for the run and deleted after it.

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;
use std::sync::Arc;

use crate::LoadArgs;
use crate::drive::{Outcome, timed};
use crate::setup::World;

/// Where the machine's NATS server listens.
pub const NATS: &str = "nats://127.0.0.1:4222";

/// Runs the timed phase through JetStream.
pub async fn run(world: &World, args: &LoadArgs) -> Result<Outcome, String> {
    let client = async_nats::connect(NATS)
        .await
        .map_err(|e| format!("NATS at {NATS}: {e}"))?;
    let js = jetstream::new(client);
    let name = format!("SOTTO_LOAD_{}", std::process::id());
    let subjects = format!("sotto_load_{}", std::process::id());
    let _ = js.delete_stream(&name).await;
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subjects}.*")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating the stream: {e}"))?;
    let outcome = drive(world, args, &js, &stream, &subjects).await;
    let _ = js.delete_stream(&name).await;
    outcome
}

/// Consumers, then the timed phase, on `stream`.
async fn drive(
    world: &World,
    args: &LoadArgs,
    js: &jetstream::Context,
    stream: &stream::Stream,
    subjects: &str,
) -> Result<Outcome, String> {
    let mut consumers = Vec::with_capacity(world.devices.len());
    for i in 0..world.devices.len() {
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("d{i}")),
                filter_subject: format!("{subjects}.{i}"),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating a consumer: {e}"))?;
        consumers.push(
            consumer
                .messages()
                .await
                .map_err(|e| format!("consuming: {e}"))?,
        );
    }
    let payloads = Arc::new(
        world
            .messages
            .iter()
            .map(|m| {
                (
                    format!("{subjects}.{}", m.recipient),
                    bytes::Bytes::from(m.mls.clone()),
                )
            })
            .collect::<Vec<_>>(),
    );
    let publisher = js.clone();
    timed(
        world,
        args,
        |clock| {
            consumers
                .into_iter()
                .map(|mut messages| {
                    let clock = clock.clone();
                    tokio::spawn(async move {
                        while let Some(Ok(message)) = messages.next().await {
                            clock.delivered(std::iter::once(message.payload.as_ref()));
                            if message.ack().await.is_err() {
                                return;
                            }
                        }
                    })
                })
                .collect()
        },
        move |i| {
            let (js, payloads) = (publisher.clone(), payloads.clone());
            async move {
                let (subject, payload) = &payloads[i];
                match js.publish(subject.clone(), payload.clone()).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            }
        },
    )
    .await
}
