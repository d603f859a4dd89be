//! Offsets of a few kernel-structure fields, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), for `local_msg` (see `proxy_common::KernelOffsets`) and the
//! splice verdict (`sk_buff.cb`).
//!
//! Only what that needs: find a struct by name and a member by name (looking through anonymous
//! struct and union members), in the format of the kernel's `Documentation/bpf/btf.rst`.
//!
//! The file is 5.5 MB (126,000 types on 6.18) and four structures of it are wanted, so nothing
//! of it is materialised: it is read in 64 KiB pieces, twice over at most, and all that is kept
//! is (1) the string-section offsets at which the wanted names are written (a handful), found in
//! one pass over the string section, so that names are compared as offsets, never read; and
//! (2) where each type's record starts (4 bytes a type, 0.5 MB for vmlinux), found in one pass
//! over the type section, so that the few records a lookup walks (the struct, its anonymous
//! members, typedefs and qualifiers) are read again one by one. A full parse into named types
//! held 21 MiB of heap at its peak, in the daemon's start-up peak RSS (docs/benchmarks.md).
use std::{fs::File, os::unix::fs::FileExt, path::Path};

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

/// Bytes read at a time in the passes over the string and type sections.
const CHUNK: usize = 64 * 1024;

/// Where the BTF bytes are read from: the file, or a buffer (tests).
pub(super) trait Source {
    /// Reads at `at`, as `pread`: fewer bytes than asked (0 at the end) are not an error.
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<usize>;
}

impl Source for File {
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, at)
    }
}

impl Source for [u8] {
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
        let tail = usize::try_from(at)
            .ok()
            .and_then(|at| self.get(at..))
            .unwrap_or_default();
        let n = tail.len().min(buf.len());
        buf[..n].copy_from_slice(&tail[..n]);
        Ok(n)
    }
}

/// Fills `buf` from `at`, or says what was cut short.
fn read_exact<S: Source + ?Sized>(
    src: &S,
    buf: &mut [u8],
    at: u64,
    what: &str,
) -> Result<(), String> {
    let mut done = 0;
    while done < buf.len() {
        match src.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => return Err(format!("{what} truncated")),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Where the two sections are, in bytes from the start of the BTF.
struct Layout {
    types: (u64, u64),
    strings: (u64, u64),
}

impl Layout {
    fn read<S: Source + ?Sized>(src: &S) -> Result<Self, String> {
        let mut header = [0u8; 24];
        read_exact(src, &mut header, 0, "header")?;
        if u16::from_le_bytes([header[0], header[1]]) != MAGIC {
            return Err("not little-endian BTF".into());
        }
        let header_len = u64::from(u32_at(&header, 4));
        let section = |off: usize, len: usize| {
            let start = header_len + u64::from(u32_at(&header, off));
            (start, start + u64::from(u32_at(&header, len)))
        };
        Ok(Self {
            types: section(8, 12),
            strings: section(16, 20),
        })
    }
}

/// Reads a range of the BTF front to back, [`CHUNK`] bytes at a time.
struct Stream<'a, S: ?Sized> {
    src: &'a S,
    buf: Vec<u8>,
    /// Unconsumed bytes: `buf[start..]`.
    start: usize,
    /// Where the byte after `buf`'s last is in the source.
    next: u64,
    end: u64,
}

impl<'a, S: Source + ?Sized> Stream<'a, S> {
    fn new(src: &'a S, (start, end): (u64, u64)) -> Self {
        Self {
            src,
            buf: Vec::with_capacity(CHUNK),
            start: 0,
            next: start,
            end,
        }
    }

    /// Position in the source of the next unconsumed byte.
    fn position(&self) -> u64 {
        self.next - (self.buf.len() - self.start) as u64
    }

    fn at_end(&self) -> bool {
        self.position() >= self.end
    }

    /// The next `n` bytes (`n` at most [`CHUNK`]).
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.buf.len() - self.start < n {
            self.buf.drain(..self.start);
            self.start = 0;
            let have = self.buf.len();
            let want = (CHUNK - have).min(usize::try_from(self.end - self.next).unwrap_or(CHUNK));
            if want + have < n {
                return Err("type section truncated".into());
            }
            self.buf.resize(have + want, 0);
            read_exact(self.src, &mut self.buf[have..], self.next, "type section")?;
            self.next += want as u64;
        }
        let bytes = &self.buf[self.start..self.start + n];
        self.start += n;
        Ok(bytes)
    }

    fn skip(&mut self, n: u64) {
        let buffered = (self.buf.len() - self.start) as u64;
        if n <= buffered {
            self.start += n as usize;
        } else {
            self.buf.clear();
            self.start = 0;
            self.next += n - buffered;
        }
    }
}

/// For each of `names`, the offsets in the string section at which it is written (followed by
/// its NUL): a name offset is one of those exactly when it names that name. One pass.
fn name_offsets<S: Source + ?Sized>(
    src: &S,
    (start, end): (u64, u64),
    names: &[&str],
) -> Result<Vec<Vec<u32>>, String> {
    let longest = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut found = vec![Vec::new(); names.len()];
    let mut window: Vec<u8> = Vec::with_capacity(longest + CHUNK);
    // Offset in the string section of window[0].
    let mut base = 0u64;
    let mut next = start;
    while next < end {
        // Keep the tail a name ending in the next piece may begin in.
        let keep = window.len().min(longest);
        base += (window.len() - keep) as u64;
        window.drain(..window.len() - keep);
        let fresh = window.len();
        let want = CHUNK.min(usize::try_from(end - next).unwrap_or(CHUNK));
        window.resize(fresh + want, 0);
        read_exact(src, &mut window[fresh..], next, "string section")?;
        next += want as u64;
        for (i, _) in window
            .iter()
            .enumerate()
            .skip(fresh)
            .filter(|(_, b)| **b == 0)
        {
            for (name, offsets) in names.iter().zip(found.iter_mut()) {
                let name = name.as_bytes();
                if !name.is_empty() && i >= name.len() && &window[i - name.len()..i] == name {
                    let offset = base + (i - name.len()) as u64;
                    offsets.push(u32::try_from(offset).map_err(|_| "string section too large")?);
                }
            }
        }
    }
    Ok(found)
}

/// The type section, indexed: where each type's record starts.
struct Types<'a, S: ?Sized> {
    src: &'a S,
    section: u64,
    /// Index = type id (0 is `void`, no record): offset of its record in the type section.
    records: Vec<u32>,
}

/// A type record's first 12 bytes.
struct Record {
    kind: u32,
    vlen: usize,
    kflag: bool,
    /// Size (structs, unions) or the type referred to (typedefs, qualifiers).
    size_or_type: u32,
    at: u64,
}

impl<'a, S: Source + ?Sized> Types<'a, S> {
    /// One pass: the index, and for each of `wanted` (sets of name offsets) the id of the first
    /// struct so named.
    fn index(
        src: &'a S,
        section: (u64, u64),
        wanted: &[&[u32]],
    ) -> Result<(Self, Vec<Option<u32>>), String> {
        let mut records = vec![0];
        let mut structs = vec![None; wanted.len()];
        let mut stream = Stream::new(src, section);
        while !stream.at_end() {
            let at = u32::try_from(stream.position() - section.0)
                .map_err(|_| "type section too large")?;
            let head = stream.take(12)?;
            let (name_off, info) = (u32_at(head, 0), u32_at(head, 4));
            let kind = (info >> 24) & 0x1f;
            let vlen = u64::from(info & 0xffff);
            if kind == KIND_STRUCT && name_off != 0 {
                for (id, names) in structs.iter_mut().zip(wanted) {
                    if id.is_none() && names.binary_search(&name_off).is_ok() {
                        *id = Some(records.len() as u32);
                    }
                }
            }
            stream.skip(match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                0..=KIND_TYPE_TAG => 0,
                _ => return Err(format!("unknown BTF kind {kind}")),
            });
            records.push(at);
        }
        if stream.position() > section.1 {
            return Err("type section truncated".into());
        }
        let types = Self {
            src,
            section: section.0,
            records,
        };
        Ok((types, structs))
    }

    fn record(&self, id: u32) -> Option<Record> {
        let at = self.section + u64::from(*self.records.get(id as usize)?);
        let mut head = [0u8; 12];
        read_exact(self.src, &mut head, at, "type section").ok()?;
        let info = u32_at(&head, 4);
        Some(Record {
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kflag: info >> 31 == 1,
            size_or_type: u32_at(&head, 8),
            at: at + 12,
        })
    }

    /// Follows typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> Option<Record> {
        let mut record = self.record(id)?;
        for _ in 0..16 {
            if !matches!(
                record.kind,
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
            ) {
                break;
            }
            id = record.size_or_type;
            record = self.record(id)?;
        }
        Some(record)
    }

    /// Bit offset of the member named at one of `member` (string offsets) in struct or union
    /// `id`, looking through anonymous members (name offset 0, as BTF writes them).
    fn find(&self, id: u32, member: &[u32], depth: u32) -> Result<Option<u32>, String> {
        let Some(record) = self.strip(id) else {
            return Ok(None);
        };
        if depth > 8 || !matches!(record.kind, KIND_STRUCT | KIND_UNION) {
            return Ok(None);
        }
        let mut members = vec![0u8; 12 * record.vlen];
        read_exact(self.src, &mut members, record.at, "type section")?;
        for m in members.chunks_exact(12) {
            let (name_off, m_type, m_off) = (u32_at(m, 0), u32_at(m, 4), u32_at(m, 8));
            let bits = if record.kflag {
                m_off & 0xff_ffff
            } else {
                m_off
            };
            if member.binary_search(&name_off).is_ok() {
                return Ok(Some(bits));
            }
            if name_off == 0
                && let Some(inner) = self.find(m_type, member, depth + 1)?
            {
                return Ok(Some(bits + inner));
            }
        }
        Ok(None)
    }
}

/// Byte offsets of `(struct, member)` pairs, each looking through anonymous members; the
/// outer error is about the BTF itself, an inner one about that pair.
pub(super) fn lookup<S: Source + ?Sized>(
    src: &S,
    pairs: &[(&str, &str)],
) -> Result<Vec<Result<u32, String>>, String> {
    let layout = Layout::read(src)?;
    let names: Vec<&str> = pairs.iter().flat_map(|&(s, m)| [s, m]).collect();
    let offsets = name_offsets(src, layout.strings, &names)?;
    let wanted: Vec<&[u32]> = offsets.iter().step_by(2).map(Vec::as_slice).collect();
    let (types, structs) = Types::index(src, layout.types, &wanted)?;
    let mut out = Vec::with_capacity(pairs.len());
    for (i, &(name, member)) in pairs.iter().enumerate() {
        out.push(match structs[i] {
            None => Err(format!("no struct {name}")),
            Some(id) => match types.find(id, &offsets[2 * i + 1], 0)? {
                None => Err(format!("no member {member} in struct {name}")),
                Some(bits) if bits % 8 != 0 => Err(format!("{name}.{member} is a bit field")),
                Some(bits) => Ok(bits / 8),
            },
        });
    }
    Ok(out)
}

fn lookup_file(path: &Path, pairs: &[(&str, &str)]) -> Result<Vec<Result<u32, String>>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    lookup(&file, pairs).map_err(|e| format!("{}: {e}", path.display()))
}

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The offsets `local_msg` needs, from the running kernel.
pub(super) fn kernel_offsets() -> Result<KernelOffsets, String> {
    let found = lookup_file(
        Path::new(VMLINUX),
        &[
            ("sock", "sk_socket"),
            ("sock", "sk_sndtimeo"),
            ("socket", "file"),
            ("file", "f_flags"),
        ],
    )?;
    let [sock_socket, sock_sndtimeo, socket_file, file_flags] =
        <[_; 4]>::try_from(found).map_err(|_| "four offsets asked for".to_owned())?;
    Ok(KernelOffsets {
        sock_socket: sock_socket?,
        sock_sndtimeo: sock_sndtimeo?,
        socket_file: socket_file?,
        file_flags: file_flags?,
    })
}

/// Offset of `cb` in `struct sk_buff`, where TCP keeps a received buffer's sequence number: the
/// splice verdict reads it to trim retransmitted overlaps (`proxy_common::GLOBAL_SKB_CB`).
pub(super) fn skb_cb_offset() -> Result<u32, String> {
    lookup_file(Path::new(VMLINUX), &[("sk_buff", "cb")])?
        .pop()
        .unwrap_or_else(|| Err("no answer".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made BTF: `struct inner { int a; int b; }`, and `struct outer { int x; union {
    /// int y; struct inner z; }; struct inner w; }` with `const` and a typedef in the way, and
    /// `struct ner { int a; }` whose name is the tail of `inner`'s in the string section. `pad`
    /// bytes of one unused name come first in the string section (0: none).
    fn sample(pad: usize) -> Vec<u8> {
        let mut strings = b"\0".to_vec();
        if pad > 0 {
            strings.extend(std::iter::repeat_n(b'p', pad));
            strings.push(0);
        }
        strings.extend(b"int\0inner\0a\0b\0outer\0x\0y\0z\0w\0t\0");
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
        // 7: struct ner { a @0 }, named by the tail of "inner"
        types.extend([s("inner") + 2, (KIND_STRUCT << 24) | 1, 4]);
        types.extend([s("a"), 1, 0]);
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

    const SAMPLE_PAIRS: [(&str, &str); 7] = [
        ("outer", "x"),
        ("outer", "y"),
        ("outer", "w"),
        ("inner", "b"),
        ("ner", "a"),
        ("outer", "a"),
        ("nothing", "x"),
    ];

    fn check_sample(btf: &[u8]) {
        let found = lookup(btf, &SAMPLE_PAIRS).unwrap();
        assert_eq!(found[..5], [Ok(0), Ok(8), Ok(16), Ok(4), Ok(0)]);
        assert_eq!(
            found[5],
            Err("no member a in struct outer".to_owned()),
            "not through named members"
        );
        assert_eq!(found[6], Err("no struct nothing".to_owned()));
    }

    #[test]
    fn offsets_through_anonymous_members_and_typedefs() {
        check_sample(&sample(0));
    }

    /// Names that straddle two of the string section's pieces are found.
    #[test]
    fn names_across_pieces() {
        for pad in CHUNK - 40..CHUNK + 4 {
            check_sample(&sample(pad));
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(lookup(&b"not btf at all, not at all"[..], &[("a", "b")]).is_err());
        let mut cut = sample(0);
        cut.truncate(40);
        assert!(lookup(cut.as_slice(), &[("outer", "x")]).is_err());
        let mut cut = sample(0);
        cut.truncate(cut.len() - 3);
        assert!(lookup(cut.as_slice(), &[("outer", "x")]).is_err());
    }

    /// The running kernel's BTF, where there is one: the fields exist and are plausible.
    #[test]
    fn running_kernel() {
        if !kernel_btf() {
            return;
        }
        let offsets = kernel_offsets().unwrap();
        assert!(offsets.sock_socket > 0 && offsets.sock_sndtimeo > offsets.sock_socket);
        let cb = skb_cb_offset().unwrap();
        assert!(cb > 0 && cb < 256, "sk_buff.cb at {cb}");
        assert!(offsets.socket_file > 0 && offsets.file_flags > 0);
    }

    fn kernel_btf() -> bool {
        if Path::new(VMLINUX).exists() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "no {VMLINUX} under CI: the kernel path needs it"
        );
        eprintln!("SKIPPED: no {VMLINUX} here, the running kernel's BTF is not checked");
        false
    }

    /// The running kernel's BTF read both ways, the full parse (the reader of before, kept here
    /// as the reference) and [`lookup`]: the same answer for every member of the structures the
    /// daemon reads and a few more, through anonymous members too.
    #[test]
    fn same_offsets_as_a_full_parse() {
        if !kernel_btf() {
            return;
        }
        let data = std::fs::read(VMLINUX).unwrap();
        let full = full::Btf::parse(&data).unwrap();
        let structs = [
            "sock",
            "socket",
            "file",
            "sk_buff",
            "sock_common",
            "tcp_sock",
            "inet_sock",
            "task_struct",
        ];
        let mut pairs = Vec::new();
        for name in structs {
            for member in full.member_names(name) {
                pairs.push((name, member));
            }
            pairs.push((name, "no_such_member"));
        }
        pairs.push(("no_such_struct", "x"));
        assert!(pairs.len() > 500, "{} pairs", pairs.len());
        let compact = lookup(data.as_slice(), &pairs).unwrap();
        let from_file = lookup_file(Path::new(VMLINUX), &pairs).unwrap();
        assert_eq!(compact, from_file);
        let mut found = 0;
        for (&(name, member), got) in pairs.iter().zip(&compact) {
            let want = full.offset(name, member);
            found += usize::from(want.is_ok());
            assert_eq!(got, &want, "{name}.{member}");
        }
        assert!(found > 500, "{found} members found");
    }

    /// The parse of every type into named types and member lists that `kernel_offsets` used
    /// before [`lookup`] (21 MiB of heap for vmlinux), as the reference of
    /// `same_offsets_as_a_full_parse`.
    mod full {
        use std::collections::HashMap;

        use super::super::*;

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
                    let (name_off, info, size_or_type) =
                        (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)?);
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
                                KIND_TYPEDEF
                                    | KIND_VOLATILE
                                    | KIND_CONST
                                    | KIND_RESTRICT
                                    | KIND_TYPE_TAG
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
        impl Btf {
            /// The names of a struct's members, anonymous members' included.
            pub(super) fn member_names(&self, name: &str) -> Vec<&str> {
                let mut out = Vec::new();
                let mut todo = vec![self.structs[name]];
                while let Some(id) = todo.pop() {
                    let Some(ty) = self.types.get(self.strip(id) as usize) else {
                        continue;
                    };
                    if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
                        continue;
                    }
                    for (member, m_type, _) in &ty.members {
                        if member.is_empty() {
                            todo.push(*m_type);
                        } else {
                            out.push(member.as_str());
                        }
                    }
                }
                out
            }
        }
    }
}
