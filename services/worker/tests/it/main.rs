//! The worker's jobs against a real PostgreSQL and nats-server.

mod deliver;
mod gauges;
mod rate;
mod relay;
