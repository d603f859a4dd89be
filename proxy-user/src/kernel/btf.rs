//! Offsets of a few kernel-structure fields, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), for `local_msg` (see `proxy_common::KernelOffsets`).
//!
//! Only what that needs: find a struct by name and a member by name (looking through anonymous
//! struct and union members), in the format of the kernel's `Documentation/bpf/btf.rst`.
use std::{collections::HashMap, path::Path};

use proxy_common::KernelOffsets;

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type of the BTF: its kind, name, the type it refers to (modifiers, typedefs) and, for
/// structs and unions, its members as (name, type, bit offset).
#[derive(Debug, Default)]
struct Type {
    kind: u32,
    name: String,
    refers: u32,
    members: Vec<(String, u32, u32)>,
}

/// The parsed type section.
#[derive(Debug)]
pub(super) struct Btf {
    /// Index = type id (0 is `void`).
    types: Vec<Type>,
    structs: HashMap<String, u32>,
}

impl Btf {
    pub(super) fn from_sys_fs() -> Result<Self, String> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub(super) fn from_file(path: &Path) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&data).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub(super) fn parse(data: &[u8]) -> Result<Self, String> {
        let u16_at = |at: usize| -> Result<u16, String> {
            data.get(at..at + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or_else(|| "truncated".to_owned())
        };
        let u32_at = |at: usize| -> Result<u32, String> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| "truncated".to_owned())
        };
        if u16_at(0)? != MAGIC {
            return Err("not little-endian BTF".into());
        }
        let header_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data
            .get(header_len + str_off..header_len + str_off + str_len)
            .ok_or("string section out of bounds")?;
        let name = |off: u32| -> String {
            let tail = strings.get(off as usize..).unwrap_or_default();
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            String::from_utf8_lossy(&tail[..end]).into_owned()
        };
        let mut types = vec![Type::default()];
        let mut structs = HashMap::new();
        let (mut at, end) = (header_len + type_off, header_len + type_off + type_len);
        if end > data.len() {
            return Err("type section out of bounds".into());
        }
        while at < end {
            let (name_off, info, size_or_type) = (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)?);
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 == 1;
            let mut ty = Type {
                kind,
                name: name(name_off),
                refers: size_or_type,
                members: Vec::new(),
            };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let (m_name, m_type, m_off) =
                            (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)?);
                        let bits = if kflag { m_off & 0xff_ffff } else { m_off };
                        ty.members.push((name(m_name), m_type, bits));
                        at += 12;
                    }
                }
                KIND_ENUM | KIND_FUNC_PROTO => at += 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => at += 12 * vlen,
                0..=KIND_TYPE_TAG => {}
                _ => return Err(format!("unknown BTF kind {kind}")),
            }
            if kind == KIND_STRUCT && !ty.name.is_empty() {
                structs.entry(ty.name.clone()).or_insert(types.len() as u32);
            }
            types.push(ty);
        }
        Ok(Self { types, structs })
    }

    /// Byte offset of `member` in struct `name`, looking through anonymous members.
    pub(super) fn offset(&self, name: &str, member: &str) -> Result<u32, String> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| format!("no struct {name}"))?;
        let bits = self
            .find(id, member, 0)
            .ok_or_else(|| format!("no member {member} in struct {name}"))?;
        if bits % 8 != 0 {
            return Err(format!("{name}.{member} is a bit field"));
        }
        Ok(bits / 8)
    }

    fn find(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        let ty = self.types.get(self.strip(id) as usize)?;
        if depth > 8 || !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        ty.members.iter().find_map(|(name, m_type, bits)| {
            if name == member {
                Some(*bits)
            } else if name.is_empty() {
                self.find(*m_type, member, depth + 1)
                    .map(|inner| bits + inner)
            } else {
                None
            }
        })
    }

    /// Follows typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.refers;
                }
                _ => break,
            }
        }
        id
    }
}

/// The offsets `local_msg` needs, from the running kernel.
pub(super) fn kernel_offsets() -> Result<KernelOffsets, String> {
    let btf = Btf::from_sys_fs()?;
    Ok(KernelOffsets {
        sock_socket: btf.offset("sock", "sk_socket")?,
        sock_sndtimeo: btf.offset("sock", "sk_sndtimeo")?,
        socket_file: btf.offset("socket", "file")?,
        file_flags: btf.offset("file", "f_flags")?,
    })
}

/// Offset of `cb` in `struct sk_buff`, where TCP keeps a received buffer's sequence number: the
/// splice verdict reads it to trim retransmitted overlaps (`proxy_common::GLOBAL_SKB_CB`).
pub(super) fn skb_cb_offset() -> Result<u32, String> {
    Btf::from_sys_fs()?.offset("sk_buff", "cb")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made BTF: `struct inner { int a; int b; }`, and `struct outer { int x; union {
    /// int y; struct inner z; }; struct inner w; }` with `const` and a typedef in the way.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0y\0z\0w\0t\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types: Vec<u32> = Vec::new();
        // 1: int (4 bytes)
        types.extend([s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 }
        types.extend([s("inner"), (KIND_STRUCT << 24) | 2, 8]);
        types.extend([s("a"), 1, 0, s("b"), 1, 32]);
        // 3: const struct inner; 4: typedef t = 3
        types.extend([0, KIND_CONST << 24, 2]);
        types.extend([s("t"), KIND_TYPEDEF << 24, 3]);
        // 5: anonymous union { y @0, z @0 (typedef t) }
        types.extend([0, (KIND_UNION << 24) | 2, 8]);
        types.extend([s("y"), 1, 0, s("z"), 4, 0]);
        // 6: struct outer { x @0, <anon union> @64, w @128 }, kind_flag set
        types.extend([s("outer"), (1 << 31) | (KIND_STRUCT << 24) | 3, 24]);
        types.extend([s("x"), 1, 0, 0, 5, 64, s("w"), 2, 128]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        out.extend(24u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((type_bytes.len() as u32).to_le_bytes());
        out.extend((type_bytes.len() as u32).to_le_bytes());
        out.extend((strings.len() as u32).to_le_bytes());
        out.extend(type_bytes);
        out.extend(strings);
        out
    }

    #[test]
    fn offsets_through_anonymous_members_and_typedefs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.offset("outer", "x"), Ok(0));
        assert_eq!(btf.offset("outer", "y"), Ok(8));
        assert_eq!(btf.offset("outer", "w"), Ok(16));
        assert_eq!(btf.offset("inner", "b"), Ok(4));
        assert!(
            btf.offset("outer", "a").is_err(),
            "not through named members"
        );
        assert!(btf.offset("nothing", "x").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut cut = sample();
        cut.truncate(40);
        assert!(Btf::parse(&cut).is_err());
    }

    /// The running kernel's BTF, where there is one: the fields exist and are plausible.
    #[test]
    fn running_kernel() {
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "no /sys/kernel/btf/vmlinux under CI: the kernel path needs it"
            );
            eprintln!("SKIPPED: no /sys/kernel/btf/vmlinux here, running_kernel checks nothing");
            return;
        }
        let offsets = kernel_offsets().unwrap();
        assert!(offsets.sock_socket > 0 && offsets.sock_sndtimeo > offsets.sock_socket);
        let cb = skb_cb_offset().unwrap();
        assert!(cb > 0 && cb < 256, "sk_buff.cb at {cb}");
        assert!(offsets.socket_file > 0 && offsets.file_flags > 0);
    }
}
