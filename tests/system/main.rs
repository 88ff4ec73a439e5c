//! Whole-system tests: the platform as users and operators meet it, with every service in-process on free ports
//! or as the real `pension` binary, against real PostgreSQL, NATS and Redis.

mod agency_api;
mod binary;
mod browser;
mod dashboard;
mod helpers;
mod ingress;
mod key_api;
mod login;
mod people_api;
mod readiness;
