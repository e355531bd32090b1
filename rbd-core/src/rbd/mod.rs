//! RBD images: pool-level operations (list, create, remove, rename, copy, trash, clone) and
//! the [`Image`] handle with its info, snapshots, locks, metadata, watchers and I/O.

pub mod aio;
pub mod buffer;
pub mod clone;
pub mod create;
pub mod diff;
mod image;
pub mod info;
pub mod io;
pub mod lock;
pub mod meta;
pub mod namespace;
pub mod progress;
pub mod snap;
pub mod trash;
pub mod watchers;

pub use image::{Image, OpenOptions};

use crate::error::{Error, Result};

/// Longest image, snapshot or metadata key name we accept (librbd's RBD_MAX_IMAGE_NAME_SIZE
/// is 96 for format 1; format 2 allows more, but object names must stay short).
pub const MAX_NAME_LEN: usize = 255;

/// Validates an image (or snapshot) name before it reaches librbd: non-empty, at most
/// [`MAX_NAME_LEN`] bytes, no `/`, `@` or NUL, no control characters.
pub fn validate_image_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(what, name, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            what,
            name,
            format!("longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | '@' | '\0') || c.is_control())
    {
        return Err(Error::invalid(
            what,
            name,
            format!("contains the character {c:?}"),
        ));
    }
    Ok(())
}

pub use aio::AioFuture;
pub use buffer::Buffer;
pub use clone::{LinkedImageSpec, ParentInfo, SnapSpec, clone_image};
pub use create::{
    CloneFormat, Features, ImageFormat, ImageOptions, ImageSpec, RBD_DIRECTORY, create, list,
    list_directory, order_of, parse_size, remove, remove_with_progress, rename,
};
pub use diff::{DiffExtent, DiffOptions};
pub use info::{
    ImageDetails, ImageFlags, ImageInfo, OpFeatures, Shrink, image_id_by_name, image_name_by_id,
};
pub use io::{ImageCursor, IoFlags};
pub use lock::{LockMode, LockOwners, Locker, Lockers};
pub use namespace::namespace_exists;
pub use snap::{SnapCreateFlags, SnapInfo, SnapNamespace, SnapRemoveFlags};
pub use trash::{
    TrashEntry, TrashSource, trash_get, trash_list, trash_move, trash_remove,
    trash_remove_with_progress, trash_restore,
};
pub use watchers::Watcher;
