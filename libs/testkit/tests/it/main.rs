//! Integration tests of the testkit against real nats-server and PostgreSQL binaries, and of the
//! test world it writes.

mod db;
mod nats;
mod world;
