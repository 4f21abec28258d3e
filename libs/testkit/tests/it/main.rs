//! Integration tests of the testkit against real nats-server and PostgreSQL binaries.

mod db;
mod nats;
