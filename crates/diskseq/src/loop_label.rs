//! A label carried by the loop device itself, so that whoever attached it
//! can find it again after a crash — without guessing from file names.
//!
//! The label lives in the device's `lo_file_name` field: `LOOP_CONFIGURE`
//! copies it from the caller's `loop_info64` verbatim (63 bytes and a NUL)
//! and `LOOP_GET_STATUS64` returns it, on every kernel with
//! `LOOP_CONFIGURE` (5.8+). Nothing in the kernel reads it: the backing
//! file's path comes from the open file (sysfs `loop/backing_file`), which is
//! also what util-linux's `losetup` shows, so a label hides nothing from an
//! administrator. (`lo_crypt_name`, the other free-text field, is no longer
//! kept since cryptoloop's removal in 5.19: measured empty on 6.18.)
//!
//! `losetup` writes the backing file's path into the same field, so a label
//! must not look like one: this type refuses a leading `/`.

use std::fmt;

/// The size of the kernel's name fields (`LO_NAME_SIZE`), NUL included.
const NAME_FIELD_SIZE: usize = 64;

/// Text stored in a loop device's `lo_file_name` at attach: 1 to 63 bytes
/// of printable ASCII, not starting with `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoopLabel(String);

/// Why a string cannot be a [`LoopLabel`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid loop label {label:?}: {reason}")]
pub struct LoopLabelError {
    /// The text refused.
    pub label: String,
    /// Why.
    pub reason: &'static str,
}

impl LoopLabel {
    /// Checks `text` (see the type's docs).
    pub fn new(text: impl Into<String>) -> Result<Self, LoopLabelError> {
        let label = text.into();
        let refuse = |reason| {
            Err(LoopLabelError {
                label: label.clone(),
                reason,
            })
        };
        if label.is_empty() {
            return refuse("empty");
        }
        if label.len() >= NAME_FIELD_SIZE {
            return refuse("longer than 63 bytes (the kernel's LO_NAME_SIZE less the NUL)");
        }
        if !label.bytes().all(|b| b.is_ascii_graphic()) {
            return refuse("only printable ASCII without spaces is kept intact");
        }
        if label.starts_with('/') {
            return refuse("starts with '/': losetup stores backing paths in the same field");
        }
        Ok(LoopLabel(label))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The kernel field's bytes: the label, NUL-padded.
    pub(crate) fn to_field(&self) -> [u8; NAME_FIELD_SIZE] {
        let mut field = [0; NAME_FIELD_SIZE];
        field[..self.0.len()].copy_from_slice(self.0.as_bytes());
        field
    }

    /// The label in a kernel name field, if the field holds one (and not,
    /// say, the path `losetup` stored there).
    pub(crate) fn from_field(field: &[u8]) -> Option<Self> {
        let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        let text = std::str::from_utf8(&field[..len]).ok()?;
        LoopLabel::new(text).ok()
    }
}

impl fmt::Display for LoopLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fit_the_kernel_field() {
        let label = LoopLabel::new("diskseq-vbd:backend/vbd/3/51712").unwrap();
        let field = label.to_field();
        assert_eq!(LoopLabel::from_field(&field), Some(label));
        assert!(LoopLabel::new("x".repeat(63)).is_ok());
        assert!(LoopLabel::new("x".repeat(64)).is_err());
        assert!(LoopLabel::new("").is_err());
        assert!(LoopLabel::new("has space").is_err());
        assert!(LoopLabel::new("nul\0byte").is_err());
        assert!(LoopLabel::new("/var/lib/images/a.img").is_err());
    }

    #[test]
    fn a_path_losetup_stored_is_not_a_label() {
        let mut field = [0u8; 64];
        field[..10].copy_from_slice(b"/tmp/a.img");
        assert_eq!(LoopLabel::from_field(&field), None);
        assert_eq!(LoopLabel::from_field(&[0u8; 64]), None);
    }
}
