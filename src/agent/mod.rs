//! Backups pulled from other hosts: `pbsfs agent` serves a host's trees read-only over a
//! byte stream ([`serve`], confined to its roots by [`confined`]), and [`remote_client`]
//! is the backup server's [`crate::backup::client::ClientProvider`] at the other end,
//! speaking the framed, versioned [`protocol`] through a pipelined [`connection`].

mod confined;
pub mod connection;
pub mod protocol;
pub mod remote_client;
pub mod serve;
