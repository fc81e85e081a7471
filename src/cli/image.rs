//! `ferry image build`: the live image.

use anyhow::Result;

use crate::cmdline::ImageBuildArgs;

pub fn run(a: ImageBuildArgs) -> Result<i32> {
    let out = crate::imagebuild::build(&a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("kernel {}: {}", out.kernel_version, out.kernel.display());
        println!("initrd: {}", out.initrd.display());
        println!("iPXE:   {}", out.ipxe.display());
        if let Some(usb) = &out.usb {
            println!("USB:    {} (write with bmaptool copy or dd)", usb.display());
        }
    }
    Ok(0)
}
