//! The node operations, written once for plain requests and transactions.
//!
//! The two differ only in the transaction id in each request's header, so
//! [`Client`](super::Client) and [`Transaction`](super::Transaction) are
//! the same type, [`Session`], over two [`Scope`]s: a plain client's
//! engine (id 0) and a transaction (its id). Their node operations are
//! inherent methods of `Session`, callable on either without importing a
//! trait; code generic over both takes `&mut Session<impl Scope>`.

use super::engine::Engine;
use super::{Error, ErrorKind, Result};
use crate::path::XsPath;
use crate::perms::Perms;
use crate::wire::{self, Errno, MsgType};

/// A connection's view of the store: plain ([`Client`](super::Client)) or
/// inside a transaction ([`Transaction`](super::Transaction)).
#[derive(Debug)]
pub struct Session<S: Scope> {
    pub(crate) scope: S,
}

/// Where a [`Session`]'s requests go: the engine of the connection and the
/// transaction id they carry. Implemented by the crate's two scopes only.
pub trait Scope: sealed::Route {}

pub(crate) mod sealed {
    use super::Engine;

    /// The engine and transaction id of a scope; crate-internal, so no one
    /// outside can make a scope that sends requests of its own making.
    pub trait Route {
        fn route(&mut self) -> (&mut Engine, u32);
    }
}

impl Scope for Engine {}

impl sealed::Route for Engine {
    fn route(&mut self) -> (&mut Engine, u32) {
        (self, 0)
    }
}

impl<S: Scope> Session<S> {
    /// The value of `path`, without a trailing NUL; binary values are fine.
    /// ENOENT when missing.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        self.path_request(MsgType::Read, path)
    }

    /// Like [`read`](Self::read), with a missing node as `None`.
    pub fn read_opt(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        not_found_as_none(self.read(path))
    }

    /// The value of `path` as UTF-8 text.
    pub fn read_string(&mut self, path: &str) -> Result<String> {
        let value = self.read(path)?;
        String::from_utf8(value)
            .map_err(|_| Error::for_request(MsgType::Read, Some(path), ErrorKind::NotUtf8))
    }

    /// Whether `path` exists (and is readable).
    pub fn exists(&mut self, path: &str) -> Result<bool> {
        Ok(self.read_opt(path)?.is_some())
    }

    /// Sets `path` to `value`, creating missing parents with empty values.
    pub fn write(&mut self, path: &str, value: impl AsRef<[u8]>) -> Result<()> {
        checked(MsgType::Write, path)?;
        let payload = wire::write_payload(path, value.as_ref());
        self.request(MsgType::Write, payload, path).map(drop)
    }

    /// Creates `path` (and parents) with an empty value; existing is fine.
    pub fn mkdir(&mut self, path: &str) -> Result<()> {
        self.path_request(MsgType::Mkdir, path).map(drop)
    }

    /// Removes `path` and its subtree. A missing node whose parent exists
    /// is fine; a missing parent is ENOENT.
    pub fn rm(&mut self, path: &str) -> Result<()> {
        self.path_request(MsgType::Rm, path).map(drop)
    }

    /// The names of the children of `path`. Falls back to DIRECTORY_PART
    /// when the list does not fit one reply (E2BIG).
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        match self.path_request(MsgType::Directory, path) {
            Ok(reply) => names(MsgType::Directory, path, wire::fields(&reply)),
            Err(e) if e.errno() == Some(Errno::E2BIG) => self.directory_part(path),
            Err(e) => Err(e),
        }
    }

    /// The permission list of `path`.
    pub fn get_perms(&mut self, path: &str) -> Result<Perms> {
        let reply = self.path_request(MsgType::GetPerms, path)?;
        Perms::parse_fields(wire::fields(&reply)).map_err(|e| {
            Error::for_request(
                MsgType::GetPerms,
                Some(path),
                ErrorKind::Protocol(format!("daemon sent an invalid permission list: {e}")),
            )
        })
    }

    /// Replaces the permission list of `path`.
    pub fn set_perms(&mut self, path: &str, perms: &Perms) -> Result<()> {
        checked(MsgType::SetPerms, path)?;
        let mut payload = wire::path_payload(path);
        payload.extend_from_slice(&perms.to_payload());
        self.request(MsgType::SetPerms, payload, path).map(drop)
    }

    /// A request whose payload is just `path`, validated first.
    fn path_request(&mut self, t: MsgType, path: &str) -> Result<Vec<u8>> {
        checked(t, path)?;
        self.request(t, wire::path_payload(path), path)
    }

    fn request(&mut self, t: MsgType, payload: Vec<u8>, path: &str) -> Result<Vec<u8>> {
        let (engine, tx_id) = self.scope.route();
        engine.request(t, tx_id, payload, Some(path))
    }

    /// Lists a directory too large for one reply, in parts (as libxenstore's
    /// `xs_directory_part`): each reply is the node's generation count and a
    /// slice of the NUL-terminated child list starting at a byte offset; the
    /// last slice ends in an extra NUL. A changed generation count means the
    /// node changed meanwhile, so the listing starts over.
    fn directory_part(&mut self, path: &str) -> Result<Vec<String>> {
        let t = MsgType::DirectoryPart;
        let protocol = |why: String| Error::for_request(t, Some(path), ErrorKind::Protocol(why));
        for _ in 0..DIRECTORY_PART_RESTARTS {
            let mut generation: Option<Vec<u8>> = None;
            let mut list: Vec<u8> = Vec::new();
            let complete = loop {
                let reply =
                    self.request(t, wire::directory_part_payload(path, list.len()), path)?;
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
}

/// How often a listing restarts because the node changed between parts
/// before we give up with EAGAIN.
const DIRECTORY_PART_RESTARTS: usize = 16;

/// Refuses syntactically invalid paths before anything is sent; relative
/// paths travel as written for the daemon to resolve.
pub(crate) fn checked(t: MsgType, path: &str) -> Result<()> {
    XsPath::validate_request(path).map_err(|e| Error::for_request(t, Some(path), e))
}

/// A read's outcome with ENOENT as `None`.
pub(crate) fn not_found_as_none(result: Result<Vec<u8>>) -> Result<Option<Vec<u8>>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
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
