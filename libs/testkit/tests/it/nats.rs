//! `NatsServer`: JetStream works, servers coexist, drop cleans up, failures explain themselves.

use std::time::Duration;

use anyhow::Context;
use ebb_testkit::{Error, NatsServer};

#[tokio::test]
async fn jetstream_publish_is_acked() -> anyhow::Result<()> {
    ebb_testkit::init_tracing();
    let nats = NatsServer::start().await?;
    let js = async_nats::jetstream::new(nats.client().await?);
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "TESTKIT".into(),
            subjects: vec!["testkit.>".into()],
            ..Default::default()
        })
        .await
        .context("creating stream")?;

    let ack = js
        .publish("testkit.hello", "hi".into())
        .await
        .context("publishing")?
        .await
        .context("awaiting the ack")?;

    assert_eq!(ack.stream, "TESTKIT");
    assert_eq!(ack.sequence, 1);
    assert_eq!(stream.info().await?.state.messages, 1);
    Ok(())
}

#[tokio::test]
async fn two_servers_coexist() -> anyhow::Result<()> {
    ebb_testkit::init_tracing();
    let (a, b) = tokio::try_join!(NatsServer::start(), NatsServer::start())?;
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());

    let (client_a, client_b) = (a.client().await?, b.client().await?);
    assert_eq!(client_a.server_info().port, a.port());
    assert_eq!(client_b.server_info().port, b.port());
    assert_ne!(
        client_a.server_info().server_id,
        client_b.server_info().server_id
    );

    // A message on one server is not seen on the other.
    let mut sub_b = client_b.subscribe("coexist").await?;
    let mut sub_a = client_a.subscribe("coexist").await?;
    client_a.publish("coexist", "only a".into()).await?;
    client_a.flush().await?;
    use futures::StreamExt;
    let got = tokio::time::timeout(Duration::from_secs(5), sub_a.next()).await?;
    assert_eq!(got.context("subscription closed")?.payload, "only a");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sub_b.next())
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn drop_kills_the_server_and_removes_its_dir() -> anyhow::Result<()> {
    ebb_testkit::init_tracing();
    let nats = NatsServer::start().await?;
    let (port, dir) = (nats.port(), nats.store_dir().to_path_buf());
    assert!(dir.join("nats.log").exists());
    drop(nats);
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    Ok(())
}

#[tokio::test]
async fn missing_binary_names_the_package() {
    ebb_testkit::init_tracing();
    let err = NatsServer::builder()
        .binary("/nonexistent/nats-server")
        .start()
        .await
        .expect_err("a nonexistent binary cannot start");
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingBinary { .. }), "{err:?}");
    assert_eq!(err.missing_package(), Some("nats-server"));
    assert!(msg.contains("/nonexistent/nats-server"), "{msg}");
    assert!(msg.contains("apt-get install nats-server"), "{msg}");
}

#[tokio::test]
async fn a_server_that_dies_reports_its_output() {
    ebb_testkit::init_tracing();
    let err = NatsServer::builder()
        .arg("--no-such-flag")
        .start()
        .await
        .expect_err("nats-server rejects unknown flags");
    let msg = err.to_string();
    assert!(matches!(err, Error::Startup { .. }), "{err:?}");
    assert!(msg.contains("no-such-flag"), "{msg}");
}
