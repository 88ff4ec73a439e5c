//! Crash points for the tests of sagas: a service asks [`Faults::hit`] at each step where a process could die, and a
//! test arms the step to make the call stop there as if the process had died (its transaction rolled back, or its
//! answer lost after the commit). Per instance, so tests running side by side in one process do not meet; never
//! armed in production, where the configuration cannot reach it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tonic::Status;

#[derive(Debug, Clone, Default)]
pub struct Faults {
    armed: Arc<Mutex<HashSet<String>>>,
}

impl Faults {
    /// Arms a crash point; it stays armed until disarmed.
    pub fn arm(&self, point: &str) {
        self.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(point.to_owned());
    }

    pub fn disarm(&self, point: &str) {
        self.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(point);
    }

    /// `Err(UNAVAILABLE)` at an armed point: the caller returns it at once, doing nothing more.
    pub fn hit(&self, point: &str) -> Result<(), Status> {
        if self.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(point) {
            tracing::warn!(point, "crash point reached");
            return Err(Status::unavailable(format!("crash point {point}")));
        }
        Ok(())
    }
}
