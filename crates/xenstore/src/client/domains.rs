//! The domain requests a toolstack sends (all privileged but
//! GET_DOMAIN_PATH): telling the daemon that domains exist, are gone or
//! act for another.

use super::engine::single_string;
use super::{Client, Error, ErrorKind, Result};
use crate::wire::{self, MsgType};

impl Client {
    /// The home of `domid`, `/local/domain/<domid>`, as the daemon says.
    pub fn get_domain_path(&mut self, domid: u32) -> Result<String> {
        let reply = self.domain_request(MsgType::GetDomainPath, wire::domid_payload(domid))?;
        single_string(MsgType::GetDomainPath, None, &reply)
    }

    /// Tells the daemon a domain exists (privileged). `mfn` and `port` locate
    /// the domain's ring on a real host; a simulating daemon may ignore them.
    pub fn introduce(&mut self, domid: u32, mfn: u64, port: u32) -> Result<()> {
        let payload = wire::nul_terminated(&[
            domid.to_string().as_bytes(),
            mfn.to_string().as_bytes(),
            port.to_string().as_bytes(),
        ]);
        self.domain_request(MsgType::Introduce, payload).map(drop)
    }

    /// Tells the daemon a domain is gone (privileged).
    pub fn release(&mut self, domid: u32) -> Result<()> {
        self.domain_request(MsgType::Release, wire::domid_payload(domid))
            .map(drop)
    }

    /// Tells the daemon a domain resumed (privileged).
    pub fn resume(&mut self, domid: u32) -> Result<()> {
        self.domain_request(MsgType::Resume, wire::domid_payload(domid))
            .map(drop)
    }

    /// Lets `domid` act with the permissions of `target` (privileged; used
    /// for device-model stub domains).
    pub fn set_target(&mut self, domid: u32, target: u32) -> Result<()> {
        let payload =
            wire::nul_terminated(&[domid.to_string().as_bytes(), target.to_string().as_bytes()]);
        self.domain_request(MsgType::SetTarget, payload).map(drop)
    }

    /// Whether the daemon knows `domid` as introduced (privileged).
    pub fn is_domain_introduced(&mut self, domid: u32) -> Result<bool> {
        let t = MsgType::IsDomainIntroduced;
        let reply = self.domain_request(t, wire::domid_payload(domid))?;
        match single_string(t, None, &reply)?.as_str() {
            "T" => Ok(true),
            "F" => Ok(false),
            other => Err(Error::for_request(
                t,
                None,
                ErrorKind::Protocol(format!("answer {other:?} is neither T nor F")),
            )),
        }
    }

    /// Sends a CONTROL request (privileged; e.g. `["log", "on"]`) and returns
    /// the raw answer.
    pub fn control(&mut self, args: &[&str]) -> Result<Vec<u8>> {
        let fields: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.domain_request(MsgType::Control, wire::nul_terminated(&fields))
    }

    fn domain_request(&mut self, t: MsgType, payload: Vec<u8>) -> Result<Vec<u8>> {
        self.engine().request(t, 0, payload, None)
    }
}
