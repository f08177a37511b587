//! Devices by name.

use candle_core::Device;
use llmrec_core::{Error, Result};

/// Parses a device string: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    let ordinal = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => {
                return Err(Error::config(
                    "device",
                    format!("unknown device `{s}`; expected cpu, cuda or cuda:N"),
                ));
            }
        },
    };
    Device::new_cuda(ordinal).map_err(|e| {
        Error::config(
            "device",
            format!("cannot open `{s}` ({e}); CUDA needs a build with `--features cuda` and a GPU"),
        )
    })
}
