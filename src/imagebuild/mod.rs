//! Building the live image (placeholder until the image-build work lands).

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::cmdline::ImageBuildArgs;

/// What a build produced.
#[derive(Debug, serde::Serialize)]
pub struct BuildOutputs {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub ipxe: PathBuf,
    pub usb: Option<PathBuf>,
    pub kernel_version: String,
}

pub fn build(_args: &ImageBuildArgs) -> Result<BuildOutputs> {
    bail!("image build is not implemented yet")
}
