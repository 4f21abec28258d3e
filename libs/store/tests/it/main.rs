//! Store tests against a real PostgreSQL database per test (and a real nats-server for the relay).

mod fixtures;
mod migrations;
mod outbox;
mod rating;
mod session;
mod targets;
mod tx;
mod webhooks;
