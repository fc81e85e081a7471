//! `ferry export`: a received disk written out as a raw or qcow2 image.

use anyhow::Result;

use crate::cmdline::{ExportArgs, FormatArg};
use crate::store::export::{export, Format};
use crate::util::human_bytes;

pub fn run(a: ExportArgs) -> Result<i32> {
    let format = match a.format {
        FormatArg::Raw => Format::Raw,
        FormatArg::Qcow2 => Format::Qcow2,
    };
    let store = crate::store::StoreConfig::new(&a.store, a.s3_config.as_deref())?;
    let out = export(&store, &a.job, a.disk, &a.to, format)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "wrote {} ({}, {}); its BLAKE3 {} matches the source disk",
            out.path,
            out.format,
            human_bytes(out.size),
            out.blake3
        );
    }
    Ok(0)
}
