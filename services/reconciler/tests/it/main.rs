//! Reconciler behaviour over a real nats-server and PostgreSQL. The site agent is played by a
//! scripted stand-in ([`harness::ScriptedSite`]) that decides exactly what each miner reports, so
//! each invariant of DESIGN §5 can be provoked precisely; the real agent and simulated miners are
//! exercised by the system test in services/ebb.

mod faults;
mod harness;
mod health;
mod incremental;
mod invariants;
mod leader;
mod silent;
mod spoof;
mod wake;
