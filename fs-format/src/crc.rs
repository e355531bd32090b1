//! CRC-32 (IEEE, for GPT) and CRC-32C (Castagnoli, for ext4 and btrfs superblocks).

const fn table(poly: u32) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { poly ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static IEEE: [u32; 256] = table(0xEDB8_8320);
static CASTAGNOLI: [u32; 256] = table(0x82F6_3B78);

/// The raw reflected CRC update, without the initial or final inversion.
fn update(table: &[u32; 256], mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// Standard CRC-32 (as used by GPT, zlib, Ethernet).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    !update(&IEEE, !0, data)
}

/// Standard CRC-32C.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    !update(&CASTAGNOLI, !0, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32(b""), 0);
    }
}
