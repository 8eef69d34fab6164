//! The node operations, written once for plain requests and transactions
//! (which differ only in the transaction id in the header), and the
//! [`Store`] trait that lets callers be generic over both.

use super::{Client, Result, Transaction};
use crate::perms::Perms;

/// Node operations common to a [`Client`] and a [`Transaction`], so code
/// that reads and writes nodes can run either inside or outside one.
pub trait Store {
    /// The value of `path`; ENOENT when missing.
    fn read(&mut self, path: &str) -> Result<Vec<u8>>;
    /// The value of `path`, `None` when missing.
    fn read_opt(&mut self, path: &str) -> Result<Option<Vec<u8>>>;
    /// The value of `path` as UTF-8 text.
    fn read_string(&mut self, path: &str) -> Result<String>;
    /// Sets `path` to `value`, creating missing parents.
    fn write(&mut self, path: &str, value: impl AsRef<[u8]>) -> Result<()>;
    /// Creates `path` with an empty value unless it exists.
    fn mkdir(&mut self, path: &str) -> Result<()>;
    /// Removes `path` and its subtree.
    fn rm(&mut self, path: &str) -> Result<()>;
    /// The names of `path`'s children.
    fn directory(&mut self, path: &str) -> Result<Vec<String>>;
    fn get_perms(&mut self, path: &str) -> Result<Perms>;
    fn set_perms(&mut self, path: &str, perms: &Perms) -> Result<()>;
    /// Whether `path` exists.
    fn exists(&mut self, path: &str) -> Result<bool> {
        Ok(self.read_opt(path)?.is_some())
    }
}

macro_rules! delegate_store {
    ($ty:ty) => {
        impl Store for $ty {
            fn read(&mut self, path: &str) -> Result<Vec<u8>> {
                <$ty>::read(self, path)
            }
            fn read_opt(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
                <$ty>::read_opt(self, path)
            }
            fn read_string(&mut self, path: &str) -> Result<String> {
                <$ty>::read_string(self, path)
            }
            fn write(&mut self, path: &str, value: impl AsRef<[u8]>) -> Result<()> {
                <$ty>::write(self, path, value)
            }
            fn mkdir(&mut self, path: &str) -> Result<()> {
                <$ty>::mkdir(self, path)
            }
            fn rm(&mut self, path: &str) -> Result<()> {
                <$ty>::rm(self, path)
            }
            fn directory(&mut self, path: &str) -> Result<Vec<String>> {
                <$ty>::directory(self, path)
            }
            fn get_perms(&mut self, path: &str) -> Result<Perms> {
                <$ty>::get_perms(self, path)
            }
            fn set_perms(&mut self, path: &str, perms: &Perms) -> Result<()> {
                <$ty>::set_perms(self, path, perms)
            }
        }
    };
}

delegate_store!(Client);
delegate_store!(Transaction<'_>);

/// The operations proper, parameterised by transaction id (0: none).
pub(crate) mod ops {
    use super::super::{Client, Error, ErrorKind, Result};
    use crate::path::XsPath;
    use crate::perms::Perms;
    use crate::wire::{self, Errno, MsgType};

    /// Refuses syntactically invalid paths before anything is sent; relative
    /// paths travel as written for the daemon to resolve.
    pub(crate) fn checked(t: MsgType, path: &str) -> Result<()> {
        XsPath::validate_request(path).map_err(|e| Error::for_request(t, Some(path), e))
    }

    pub(crate) fn read(client: &mut Client, tx: u32, path: &str) -> Result<Vec<u8>> {
        checked(MsgType::Read, path)?;
        client.request(MsgType::Read, tx, wire::path_payload(path), Some(path))
    }

    pub(crate) fn read_opt(client: &mut Client, tx: u32, path: &str) -> Result<Option<Vec<u8>>> {
        not_found_as_none(read(client, tx, path))
    }

    pub(crate) fn not_found_as_none(result: Result<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn read_string(client: &mut Client, tx: u32, path: &str) -> Result<String> {
        let value = read(client, tx, path)?;
        String::from_utf8(value)
            .map_err(|_| Error::for_request(MsgType::Read, Some(path), ErrorKind::NotUtf8))
    }

    pub(crate) fn write(client: &mut Client, tx: u32, path: &str, value: &[u8]) -> Result<()> {
        checked(MsgType::Write, path)?;
        client
            .request(
                MsgType::Write,
                tx,
                wire::write_payload(path, value),
                Some(path),
            )
            .map(drop)
    }

    pub(crate) fn mkdir(client: &mut Client, tx: u32, path: &str) -> Result<()> {
        checked(MsgType::Mkdir, path)?;
        client
            .request(MsgType::Mkdir, tx, wire::path_payload(path), Some(path))
            .map(drop)
    }

    pub(crate) fn rm(client: &mut Client, tx: u32, path: &str) -> Result<()> {
        checked(MsgType::Rm, path)?;
        client
            .request(MsgType::Rm, tx, wire::path_payload(path), Some(path))
            .map(drop)
    }

    pub(crate) fn get_perms(client: &mut Client, tx: u32, path: &str) -> Result<Perms> {
        checked(MsgType::GetPerms, path)?;
        let reply = client.request(MsgType::GetPerms, tx, wire::path_payload(path), Some(path))?;
        Perms::parse_fields(wire::fields(&reply)).map_err(|e| {
            Error::for_request(
                MsgType::GetPerms,
                Some(path),
                ErrorKind::Protocol(format!("daemon sent an invalid permission list: {e}")),
            )
        })
    }

    pub(crate) fn set_perms(client: &mut Client, tx: u32, path: &str, perms: &Perms) -> Result<()> {
        checked(MsgType::SetPerms, path)?;
        let mut payload = wire::path_payload(path);
        payload.extend_from_slice(&perms.to_payload());
        client
            .request(MsgType::SetPerms, tx, payload, Some(path))
            .map(drop)
    }

    pub(crate) fn directory(client: &mut Client, tx: u32, path: &str) -> Result<Vec<String>> {
        checked(MsgType::Directory, path)?;
        match client.request(MsgType::Directory, tx, wire::path_payload(path), Some(path)) {
            Ok(reply) => names(MsgType::Directory, path, wire::fields(&reply)),
            Err(e) if e.errno() == Some(Errno::E2BIG) => directory_part(client, tx, path),
            Err(e) => Err(e),
        }
    }

    /// How often a listing restarts because the node changed between parts
    /// before we give up with EAGAIN.
    const DIRECTORY_PART_RESTARTS: usize = 16;

    /// Lists a directory too large for one reply, in parts (as libxenstore's
    /// `xs_directory_part`): each reply is the node's generation count and a
    /// slice of the NUL-terminated child list starting at a byte offset; the
    /// last slice ends in an extra NUL. A changed generation count means the
    /// node changed meanwhile, so the listing starts over.
    fn directory_part(client: &mut Client, tx: u32, path: &str) -> Result<Vec<String>> {
        let t = MsgType::DirectoryPart;
        let protocol = |why: String| Error::for_request(t, Some(path), ErrorKind::Protocol(why));
        for _ in 0..DIRECTORY_PART_RESTARTS {
            let mut generation: Option<Vec<u8>> = None;
            let mut list: Vec<u8> = Vec::new();
            let complete = loop {
                let reply = client.request(
                    t,
                    tx,
                    wire::directory_part_payload(path, list.len()),
                    Some(path),
                )?;
                let split = reply
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or_else(|| protocol("reply lacks the generation count".into()))?;
                let (gen, chunk) = (&reply[..split], &reply[split + 1..]);
                match &generation {
                    None => generation = Some(gen.to_vec()),
                    Some(first) if first != gen => break false,
                    Some(_) => {}
                }
                if chunk.is_empty() {
                    return Err(protocol("empty directory part".into()));
                }
                list.extend_from_slice(chunk);
                if chunk == b"\0" || list.ends_with(b"\0\0") {
                    break true;
                }
            };
            if complete {
                // Drop the terminating extra NUL; what is left is `a\0b\0`.
                list.pop();
                return names(t, path, wire::fields(&list));
            }
        }
        Err(Error::for_request(
            t,
            Some(path),
            ErrorKind::Xenstore(Errno::EAGAIN),
        ))
    }

    fn names<'a>(
        t: MsgType,
        path: &str,
        fields: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Vec<String>> {
        fields
            .map(|name| {
                String::from_utf8(name.to_vec()).map_err(|_| {
                    Error::for_request(
                        t,
                        Some(path),
                        ErrorKind::Protocol("child name is not UTF-8".into()),
                    )
                })
            })
            .collect()
    }
}
