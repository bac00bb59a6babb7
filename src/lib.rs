//! msbfs: a read-only FUSE filesystem that shows every microsandbox sandbox as a
//! directory whose `merged.log` is one rotation-transparent, cursor-addressed,
//! ever-growing file of all its logs merged.
//!
//! Data flows one way (DESIGN §3): producer files → [`source`] → [`ingest`] →
//! [`timeline`] (renderer, batches, checkpoints) → [`store`] (rendered bytes on disk)
//! → [`fs`] (handles, follow mode) → [`fuse`] (thin adapter). [`mount`] wires them
//! together, [`notify`] tells a service manager when the mount answers and when it stops,
//! and [`logging`] sets up the log; [`simulate`] is a producer that writes
//! exactly what microsandbox writes.

#![warn(missing_docs)]

pub mod codec;
pub mod demo;
pub mod fs;
pub mod fuse;
pub mod ingest;
pub mod limits;
pub mod logging;
pub mod mount;
pub mod mounter;
pub mod notify;
pub mod simulate;
pub mod source;
pub mod store;
pub mod time;
pub mod timeline;
pub mod view;
