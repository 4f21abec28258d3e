//! The worker's jobs against a real PostgreSQL and nats-server.

mod gauges;
mod rate;
mod relay;
