//! The in-memory window: how many messages, and how many octets of content, the
//! scheduler holds at once. A place is taken before a message is held and given
//! back when it is dropped; without one, a message waits in the store.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct Window {
    messages: Arc<Semaphore>,
    kibibytes: Arc<Semaphore>,
    max_kibibytes: u32,
}

/// One message's place in the window.
pub(crate) struct Place {
    _message: OwnedSemaphorePermit,
    _kibibytes: OwnedSemaphorePermit,
}

impl Window {
    pub fn new(max_messages: usize, max_bytes: usize) -> Window {
        let max_kibibytes = u32::try_from(max_bytes / 1024).unwrap_or(u32::MAX).max(1);
        Window {
            messages: Arc::new(Semaphore::new(max_messages)),
            kibibytes: Arc::new(Semaphore::new(max_kibibytes as usize)),
            max_kibibytes,
        }
    }

    /// A place for a message of `size` octets, if there is room. A message larger
    /// than the whole budget takes all of it, so it can still pass, alone.
    pub fn try_take(&self, size: usize) -> Option<Place> {
        let cost = u32::try_from(size.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_kibibytes);
        let kibibytes = self.kibibytes.clone().try_acquire_many_owned(cost).ok()?;
        let message = self.messages.clone().try_acquire_owned().ok()?;
        Some(Place {
            _message: message,
            _kibibytes: kibibytes,
        })
    }

    /// How many more messages may be held now.
    pub fn room(&self) -> usize {
        self.messages.available_permits()
    }

    /// Waits up to `timeout` until at least one more message may be held.
    pub async fn wait_for_room(&self, timeout: Duration) {
        if let Ok(Ok(permit)) = tokio::time::timeout(timeout, self.messages.acquire()).await {
            drop(permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages_and_bytes() {
        let window = Window::new(3, 10 * 1024);
        let a = window.try_take(6 * 1024).unwrap();
        assert!(window.try_take(6 * 1024).is_none(), "over the byte budget");
        let _b = window.try_take(100).unwrap();
        let _c = window.try_take(100).unwrap();
        assert!(window.try_take(1).is_none(), "over the message count");
        assert_eq!(window.room(), 0);
        drop(a);
        assert!(
            window.try_take(50 * 1024).is_none(),
            "two small ones still hold 2 KiB"
        );
        assert_eq!(window.room(), 1);
    }

    #[test]
    fn an_oversized_message_passes_alone() {
        let window = Window::new(10, 4 * 1024);
        let big = window.try_take(1 << 30).unwrap();
        assert!(window.try_take(1).is_none());
        drop(big);
        assert!(window.try_take(1).is_some());
    }
}
