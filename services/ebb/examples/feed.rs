//! A consumer of an org's event feed, as an integration would write one: it connects with the
//! credentials `ebb admin integration add <name> --org <org>` minted, creates (or finds) its
//! durable pull consumer `integration-<name>` filtered to `ebb.event.<org>.>`, and prints each
//! CloudEvent's type, subject and state, acking it after.
//!
//! ```text
//! cargo run -p ebb --example feed -- <nats-url> <creds-file> <ca-file> <org-id> <name>
//! # with `ebb dev`: tls://127.0.0.1:4222 .ebb/nats/integration.creds .ebb/nats/tls/ca.pem <org> dev
//! ```
//!
//! It stops after 60 s without a message.

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, creds, ca, org, name] = args.as_slice() else {
        eprintln!("usage: feed <nats-url> <creds-file> <ca-file> <org-id> <integration-name>");
        std::process::exit(2);
    };
    let user = format!("integration-{name}");
    // The credentials allow replies on the user's own inbox prefix only.
    let client = async_nats::ConnectOptions::with_credentials_file(creds)
        .await?
        .custom_inbox_prefix(format!("_INBOX_{user}"))
        .add_root_certificates(ca.into())
        .require_tls(true)
        .connect(url.as_str())
        .await?;
    let js = jetstream::new(client);
    let consumer = js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some(user.clone()),
                // The credentials allow exactly this filter: the org's own events.
                filter_subject: format!("ebb.event.{org}.>"),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
            "EVENT",
        )
        .await?;
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_secs(60))
            .messages()
            .await?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!(e))?;
            let event: serde_json::Value = serde_json::from_slice(&message.payload)?;
            println!(
                "{} {} {} (state {})",
                event["time"].as_str().unwrap_or("?"),
                event["type"].as_str().unwrap_or("?"),
                event["subject"].as_str().unwrap_or("?"),
                event["data"]["state"].as_str().unwrap_or("?"),
            );
            message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            got += 1;
        }
        if got == 0 {
            return Ok(());
        }
    }
}
