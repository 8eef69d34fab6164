//! WATCH and UNWATCH: the watch index, the per-domain watch quota, and a
//! watch's first event.

use xenstore::path::XsPath;
use xenstore::wire::{self, Errno, Message, MsgType};

use super::payload::{ack, strings, utf8};
use super::{Reply, Request};
use crate::watch::Subscriber;

impl Request<'_> {
    pub(super) fn watch(&mut self, payload: &[u8]) -> Reply {
        let args = strings(payload);
        let [raw, token] = args.as_slice() else {
            return Err(Errno::EINVAL);
        };
        let path = self.path(raw, true)?;
        let token = utf8(token)?;
        let key = (Box::<str>::from(path.as_str()), Box::<str>::from(token));
        if self.session.watches.contains(&key) {
            return Err(Errno::EEXIST);
        }
        let domid = self.session.domid;
        let count = self.state.watch_counts.get(&domid).copied().unwrap_or(0);
        if !self.session.privileged && count >= self.state.quotas.watches {
            return Err(Errno::E2BIG);
        }
        let relative = !raw.starts_with(b"/") && !raw.starts_with(b"@");
        let prefix_len = if relative {
            XsPath::domain_home(domid).as_str().len() + 1
        } else {
            0
        };
        self.state.watches.add(
            path.as_str(),
            Subscriber {
                conn: self.session.id,
                token: token.into(),
                prefix_len,
            },
        );
        *self.state.watch_counts.entry(domid).or_insert(0) += 1;
        self.session.watches.insert(key);
        let first_event = wire::watch_payload(&path.as_str()[prefix_len..], token);
        self.out
            .frames
            .push(Message::new(MsgType::WatchEvent, 0, 0, first_event));
        Ok(ack(()))
    }

    pub(super) fn unwatch(&mut self, payload: &[u8]) -> Reply {
        let args = strings(payload);
        let [raw, token] = args.as_slice() else {
            return Err(Errno::EINVAL);
        };
        let path = self.path(raw, true)?;
        let key = (
            Box::<str>::from(path.as_str()),
            Box::<str>::from(utf8(token)?),
        );
        if !self.session.watches.remove(&key) {
            return Err(Errno::ENOENT);
        }
        self.state.watches.remove(&key.0, self.session.id, &key.1);
        if let Some(count) = self.state.watch_counts.get_mut(&self.session.domid) {
            *count = count.saturating_sub(1);
        }
        Ok(ack(()))
    }
}
