//! Who holds which `WatchJob` streams on this replica: at most `watch.max_per_user` per
//! user and `watch.max_per_connection` per connection (peer address) at once.
//!
//! A stream takes a [`WatchSlot`] before it subscribes and holds it for its whole life;
//! dropping the slot (the stream ended for any reason: client gone, final status, server
//! shutdown, error) gives both shares back. Only held slots have an entry, so the maps are
//! bounded by the streams open, never by the ids or addresses ever seen.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use uuid::Uuid;

pub use crate::error::WatchCeiling;
use crate::{config::WatchConfig, error::SchedulerError};

#[derive(Debug, Default)]
struct Held {
    users: HashMap<Uuid, u32>,
    connections: HashMap<String, u32>,
}

/// The watcher ceilings of one replica.
#[derive(Debug, Clone)]
pub struct Watchers {
    per_user: u32,
    per_connection: u32,
    held: Arc<Mutex<Held>>,
}

fn lock(m: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A held watcher slot; dropping it releases it.
#[derive(Debug)]
pub struct WatchSlot {
    user: Uuid,
    connection: String,
    held: Arc<Mutex<Held>>,
}

impl Watchers {
    /// Ceilings from the configuration.
    pub fn new(config: &WatchConfig) -> Self {
        Self {
            per_user: config.max_per_user,
            per_connection: config.max_per_connection,
            held: Arc::new(Mutex::new(Held::default())),
        }
    }

    /// Takes a slot for `user` on `connection`, or refuses naming the ceiling reached.
    pub fn acquire(&self, user: Uuid, connection: &str) -> Result<WatchSlot, SchedulerError> {
        let mut held = lock(&self.held);
        if held.users.get(&user).copied().unwrap_or(0) >= self.per_user {
            return Err(SchedulerError::TooManyWatchers {
                ceiling: WatchCeiling::PerUser,
                cap: self.per_user,
            });
        }
        if held.connections.get(connection).copied().unwrap_or(0) >= self.per_connection {
            return Err(SchedulerError::TooManyWatchers {
                ceiling: WatchCeiling::PerConnection,
                cap: self.per_connection,
            });
        }
        *held.users.entry(user).or_insert(0) += 1;
        *held.connections.entry(connection.to_owned()).or_insert(0) += 1;
        Ok(WatchSlot { user, connection: connection.to_owned(), held: self.held.clone() })
    }

    /// Slots held on this replica.
    pub fn held(&self) -> usize {
        lock(&self.held).users.values().map(|n| *n as usize).sum()
    }
}

fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        release(&mut held.users, &self.user);
        release(&mut held.connections, &self.connection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watchers(per_user: u32, per_connection: u32) -> Watchers {
        Watchers::new(&WatchConfig {
            channel_capacity: 8,
            max_per_user: per_user,
            max_per_connection: per_connection,
        })
    }

    fn refused(r: Result<WatchSlot, SchedulerError>) -> WatchCeiling {
        match r {
            Err(SchedulerError::TooManyWatchers { ceiling, .. }) => ceiling,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn each_ceiling_refuses_past_its_cap_and_a_dropped_slot_is_given_back() {
        let w = watchers(3, 2);
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = w.acquire(alice, "10.0.0.1:1000").unwrap();
        let _a2 = w.acquire(alice, "10.0.0.1:1000").unwrap();
        assert_eq!(refused(w.acquire(alice, "10.0.0.1:1000")), WatchCeiling::PerConnection);
        let _a3 = w.acquire(alice, "10.0.0.1:2000").unwrap();
        assert_eq!(refused(w.acquire(alice, "10.0.0.1:3000")), WatchCeiling::PerUser);
        // Another user on a fresh connection is not affected by alice's share.
        let _b1 = w.acquire(bob, "10.0.0.2:1000").unwrap();
        drop(a1);
        let _a4 = w.acquire(alice, "10.0.0.1:1000").unwrap();
        assert_eq!(w.held(), 4);
    }

    #[test]
    fn nothing_stays_behind_once_every_slot_is_dropped() {
        let w = watchers(100, 32);
        let slots: Vec<_> =
            (0..50).map(|i| w.acquire(Uuid::new_v4(), &format!("10.0.0.{i}:1")).unwrap()).collect();
        assert_eq!(w.held(), 50);
        drop(slots);
        let held = lock(&w.held);
        assert!(held.users.is_empty() && held.connections.is_empty());
    }
}
