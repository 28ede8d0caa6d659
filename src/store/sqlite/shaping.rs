//! [`ShapingStore`] on SQLite: one node uses the database at a time, so its own
//! memory is the whole truth about its destinations; nothing is shared.

use super::SqliteStore;
use crate::store::{ShapingStore, SharedShaping};

impl ShapingStore for SqliteStore {
    fn shared_shaping(&self) -> Option<&dyn SharedShaping> {
        None
    }
}
