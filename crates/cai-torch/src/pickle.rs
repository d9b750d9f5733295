//! A pickle interpreter that builds values and never executes code.
//!
//! It runs the opcodes `torch.save` emits (protocol 2, plus the cheap protocol 3-5 ones and
//! a few text opcodes). `GLOBAL` resolves only whitelisted names; everything else is
//! [`Error::ForbiddenGlobal`]. `REDUCE`/`NEWOBJ` never call anything: each whitelisted
//! callable has its meaning written here in Rust (tensor rebuild, `OrderedDict`, `set`…),
//! and a whitelisted class only yields a plain [`Object`] whose `BUILD` state is recorded.
//!
//! Lists, dicts, sets and objects live in an arena ([`Loaded::heap`]) and are referred to
//! by index, so the memo can share them (as pickle requires) without reference cycles.
//! Tuples are immutable and carry their nesting depth, which is bounded.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::{DType, Error, ReadOptions};

/// Index of a mutable value in [`Loaded::heap`].
pub(crate) type ObjId = usize;

/// A pickled value.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// The content is kept for `Debug` output only; no consumer reads bytes today.
    #[allow(dead_code)]
    Bytes(Rc<[u8]>),
    Tuple(Rc<Tuple>),
    Global(Rc<Global>),
    Ref(ObjId),
    Storage(Rc<Storage>),
    Tensor(Rc<TensorMeta>),
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(t) => t.depth,
            _ => 0,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// A short description for error messages.
    pub(crate) fn kind(&self, heap: &[HeapObj]) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::Global(g) => format!("the global `{}`", g.path),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Ref(id) => match heap.get(*id) {
                Some(HeapObj::List(_)) => "a list".into(),
                Some(HeapObj::Dict(_)) => "a dict".into(),
                Some(HeapObj::Set(_)) => "a set".into(),
                Some(HeapObj::Object(o)) => format!("a `{}` object", o.class.path),
                Some(HeapObj::NumpyDType { code, .. }) => format!("the numpy dtype `{code}`"),
                None => "a dangling reference".into(),
            },
        }
    }
}

/// An immutable tuple and its nesting depth (1 + deepest child tuple).
#[derive(Debug)]
pub(crate) struct Tuple {
    pub(crate) depth: usize,
    pub(crate) items: Vec<Value>,
}

/// A whitelisted global.
#[derive(Debug)]
pub(crate) struct Global {
    pub(crate) path: String,
    pub(crate) kind: GlobalKind,
}

/// What a whitelisted global means here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GlobalKind {
    /// `torch._utils._rebuild_tensor_v2` (and the older `_rebuild_tensor`).
    RebuildTensor,
    /// `torch._utils._rebuild_parameter` / `_rebuild_parameter_with_state`.
    RebuildParameter,
    /// `torch._tensor._rebuild_from_type_v2(func, type, args, state)`.
    RebuildFromType,
    /// `torch.Tensor` / `torch.nn.parameter.Parameter`, only as an argument.
    TensorType,
    /// `torch.FloatStorage` and friends: the type inside a persistent id.
    Storage(DType),
    /// `torch.float32` and friends: a value, never called.
    DTypeConst(DType),
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `builtins.set` / `builtins.frozenset`.
    Set,
    /// `torch.device`.
    Device,
    /// `torch.Size`.
    Size,
    /// `_codecs.encode` (how protocol 2 pickles `bytes`).
    CodecsEncode,
    /// A class whose instances are recorded as plain objects.
    Class,
    /// A function that may be referenced as an attribute but is never called.
    Opaque,
    /// `numpy.dtype`: called with a type code (`'f8'`), it yields a [`HeapObj::NumpyDType`].
    NumpyDType,
    /// `numpy.core.multiarray.scalar` (`numpy._core` in numpy 2): called with a dtype and
    /// the value's bytes, it yields an int, float or bool.
    NumpyScalar,
}

/// A mutable value in the arena.
#[derive(Debug)]
pub(crate) enum HeapObj {
    List(Vec<Value>),
    Dict(Dict),
    Set(Vec<Value>),
    Object(Object),
    /// A numpy dtype: its type code (`f8`, `i4`, `b1`…) and byte order (`<`, `>`, `|`,
    /// `=`), which `BUILD` sets from the pickled state.
    NumpyDType {
        code: Rc<str>,
        byteorder: u8,
    },
}

/// An insertion-ordered dict (`dict` and `OrderedDict` alike).
#[derive(Debug, Default)]
pub(crate) struct Dict {
    pub(crate) entries: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum DictKey {
    Str(Rc<str>),
    Int(i64),
    None,
}

impl Dict {
    fn insert(&mut self, k: Value, v: Value) {
        let key = match &k {
            Value::Str(s) => Some(DictKey::Str(s.clone())),
            Value::Int(i) => Some(DictKey::Int(*i)),
            Value::Bool(b) => Some(DictKey::Int(i64::from(*b))),
            Value::None => Some(DictKey::None),
            _ => None,
        };
        if let Some(key) = key {
            if let Some(&i) = self.index.get(&key) {
                self.entries[i].1 = v;
                return;
            }
            self.index.insert(key, self.entries.len());
        }
        self.entries.push((k, v));
    }

    /// The value under a string key.
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        let i = self.index.get(&DictKey::Str(Rc::from(name)))?;
        self.entries.get(*i).map(|(_, v)| v)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// An instance of a whitelisted class: its class and `BUILD` state (constructor
/// arguments are checked to be a tuple, then dropped).
#[derive(Debug)]
pub(crate) struct Object {
    pub(crate) class: Rc<Global>,
    pub(crate) state: Value,
}

/// A storage named by a persistent id `('storage', torch.XStorage, key, location, numel)`.
#[derive(Debug)]
pub(crate) struct Storage {
    pub(crate) dtype: DType,
    pub(crate) key: String,
    pub(crate) location: String,
    pub(crate) numel: u64,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug)]
pub(crate) struct TensorMeta {
    pub(crate) storage: Rc<Storage>,
    pub(crate) offset: u64,
    pub(crate) shape: Vec<u64>,
    pub(crate) stride: Vec<u64>,
}

/// The result of running a pickle.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) root: Value,
    pub(crate) heap: Vec<HeapObj>,
    /// Class paths seen in `GLOBAL`s, in first-seen order.
    pub(crate) classes: Vec<String>,
}

/// Runs the pickle in `data` and returns the value `STOP` left.
pub(crate) fn load(file: &str, data: &[u8], opts: &ReadOptions) -> Result<Loaded, Error> {
    let limits = &opts.limits;
    if data.len() as u64 > limits.max_pickle_bytes {
        return Err(Error::Limit {
            file: file.to_string(),
            what: "data.pkl size (bytes)",
            got: data.len() as u64,
            limit: limits.max_pickle_bytes,
        });
    }
    let mut m = Machine {
        file,
        data,
        opts,
        pos: 0,
        op_start: 0,
        ops: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        heap: Vec::new(),
        classes: Vec::new(),
        seen_classes: HashSet::new(),
    };
    let root = m.run()?;
    Ok(Loaded {
        root,
        heap: m.heap,
        classes: m.classes,
    })
}

/// Resolves `module.name` against the whitelist.
pub(crate) fn classify(module: &str, name: &str, extra: &[String]) -> Option<GlobalKind> {
    use GlobalKind as K;
    let module = match module {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        m => m,
    };
    let full = format!("{module}.{name}");
    let kind = match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => K::RebuildTensor,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            K::RebuildParameter
        }
        ("torch._tensor", "_rebuild_from_type_v2") => K::RebuildFromType,
        ("torch" | "torch._tensor", "Tensor") | ("torch.nn.parameter", "Parameter") => {
            K::TensorType
        }
        ("torch.storage", "UntypedStorage") => K::Storage(DType::U8),
        // torch < 1.13 names GPU storages `torch.cuda.FloatStorage` in persistent ids.
        ("torch.cuda", n) if DType::from_storage_name(n).is_some() => {
            K::Storage(DType::from_storage_name(n)?)
        }
        ("torch", "device") => K::Device,
        ("torch", "Size") => K::Size,
        ("torch", n) => {
            if let Some(d) = DType::from_storage_name(n) {
                K::Storage(d)
            } else {
                K::DTypeConst(DType::from_torch_name(n)?)
            }
        }
        ("collections", "OrderedDict") => K::OrderedDict,
        ("builtins", "set" | "frozenset") => K::Set,
        ("_codecs", "encode") => K::CodecsEncode,
        ("numpy", "dtype") => K::NumpyDType,
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => K::NumpyScalar,
        ("torch._C._nn" | "torch.nn.functional", n) if is_identifier(n) => K::Opaque,
        (m, n) if m.starts_with("torch.nn.modules.") && starts_upper(n) && is_identifier(n) => {
            K::Class
        }
        _ if ALLOWED_CLASSES.contains(&full.as_str()) => K::Class,
        _ if extra.contains(&full) => K::Class,
        _ => return None,
    };
    Some(kind)
}

/// Class paths accepted as plain objects, beyond every `torch.nn.modules.*` class.
pub(crate) const ALLOWED_CLASSES: &[&str] = &[
    "functools.partial",
    "torch.utils.data.dataset.TensorDataset",
    "torch.nn.parallel.data_parallel.DataParallel",
    "blocks.model_vit_inception.ViT_Astro",
    "blocks.photoz.Input_Mix_Model",
    "blocks.photoz.InceptionBlock",
    "blocks.photoz.ConvBlock",
    "timm.models.vision_transformer.VisionTransformer",
    "timm.models.vision_transformer.Block",
    "timm.models.vision_transformer.Attention",
    "timm.models.vision_transformer.Mlp",
    "timm.models.vision_transformer.LayerScale",
    "timm.models.layers.patch_embed.PatchEmbed",
    "timm.models.layers.mlp.Mlp",
    "timm.models.layers.drop.DropPath",
    "timm.layers.patch_embed.PatchEmbed",
    "timm.layers.mlp.Mlp",
    "timm.layers.drop.DropPath",
    "timm.layers.layer_scale.LayerScale",
];

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

fn starts_upper(s: &str) -> bool {
    s.as_bytes().first().is_some_and(|b| b.is_ascii_uppercase())
}

/// The pickletools name of an opcode, for error messages.
pub(crate) fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

struct Machine<'a> {
    file: &'a str,
    data: &'a [u8],
    opts: &'a ReadOptions,
    pos: usize,
    op_start: usize,
    ops: u64,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    heap: Vec<HeapObj>,
    classes: Vec<String>,
    seen_classes: HashSet<String>,
}

type R<T> = Result<T, Error>;

impl Machine<'_> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Pickle {
            file: self.file.to_string(),
            offset: self.op_start,
            reason: reason.into(),
        }
    }

    fn limit(&self, what: &'static str, got: usize, limit: usize) -> Error {
        Error::Limit {
            file: self.file.to_string(),
            what,
            got: got as u64,
            limit: limit as u64,
        }
    }

    fn take(&mut self, n: usize) -> R<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated: {} needs {n} more bytes, {} left",
                opcode_name(self.data.get(self.op_start).copied().unwrap_or(0)),
                self.data.len() - self.pos
            ))),
        }
    }

    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len_u64(&mut self) -> R<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit in memory")))
    }

    /// A `\n`-terminated ASCII line of at most `max` bytes (text opcodes, GLOBAL).
    fn line(&mut self, max: usize) -> R<String> {
        let rest = &self.data[self.pos..];
        let window = &rest[..rest.len().min(max + 1)];
        let Some(n) = window.iter().position(|&b| b == b'\n') else {
            return Err(self.err(format!("no newline within {max} bytes")));
        };
        let text = std::str::from_utf8(&rest[..n])
            .map_err(|_| self.err("line is not UTF-8"))?
            .to_string();
        self.pos += n + 1;
        Ok(text)
    }

    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, v: Value) -> R<()> {
        let max = self.opts.limits.max_stack;
        if self.stack.len() + self.marks.len() >= max {
            return Err(self.limit("pickle stack depth", self.stack.len() + 1, max));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> R<Value> {
        if self.stack.len() <= self.fence() {
            let op = opcode_name(self.data.get(self.op_start).copied().unwrap_or(0));
            return Err(self.err(format!("{op} with an empty stack (stack underflow)")));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> R<&Value> {
        if self.stack.len() <= self.fence() {
            let op = opcode_name(self.data.get(self.op_start).copied().unwrap_or(0));
            return Err(self.err(format!("{op} with an empty stack (stack underflow)")));
        }
        self.stack.last().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            let op = opcode_name(self.data.get(self.op_start).copied().unwrap_or(0));
            return Err(self.err(format!("{op} without a MARK")));
        };
        if m > self.stack.len() {
            return Err(self.err("MARK above the top of the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn alloc(&mut self, obj: HeapObj) -> R<Value> {
        let max = self.opts.limits.max_objects;
        if self.heap.len() >= max {
            return Err(self.limit("objects created", self.heap.len() + 1, max));
        }
        self.heap.push(obj);
        Ok(Value::Ref(self.heap.len() - 1))
    }

    fn check_len(&self, len: usize) -> R<()> {
        let max = self.opts.limits.max_container_len;
        if len > max {
            return Err(self.limit("container length", len, max));
        }
        Ok(())
    }

    fn tuple(&self, items: Vec<Value>) -> R<Value> {
        self.check_len(items.len())?;
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        let max = self.opts.limits.max_depth;
        if depth > max {
            return Err(self.limit("tuple nesting depth", depth, max));
        }
        Ok(Value::Tuple(Rc::new(Tuple { depth, items })))
    }

    fn memo_put(&mut self, idx: u32) -> R<()> {
        let v = self.top()?.clone();
        let max = self.opts.limits.max_memo;
        if self.memo.len() >= max && !self.memo.contains_key(&idx) {
            return Err(self.limit("memo entries", self.memo.len() + 1, max));
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> R<()> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {idx} was never stored")))?;
        self.push(v)
    }

    fn string(&mut self, n: usize) -> R<Value> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(_) => Err(self.err("string is not valid UTF-8")),
        }
    }

    fn bytes(&mut self, n: usize) -> R<Value> {
        let b = self.take(n)?;
        Ok(Value::Bytes(Rc::from(b)))
    }

    fn long(&mut self, n: usize) -> R<Value> {
        if n > 8 {
            return Err(self.err(format!("integer of {n} bytes does not fit in i64")));
        }
        let b = self.take(n)?;
        if b.is_empty() {
            return Ok(Value::Int(0));
        }
        let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
        let mut a = [fill; 8];
        a[..b.len()].copy_from_slice(b);
        Ok(Value::Int(i64::from_le_bytes(a)))
    }

    fn heap_mut(&mut self, v: &Value) -> Option<&mut HeapObj> {
        match v {
            Value::Ref(id) => self.heap.get_mut(*id),
            _ => None,
        }
    }

    fn global(&mut self, module: &str, name: &str) -> R<Value> {
        let Some(kind) = classify(module, name, &self.opts.extra_classes) else {
            return Err(Error::ForbiddenGlobal {
                file: self.file.to_string(),
                global: format!("{module}.{name}"),
                offset: self.op_start,
            });
        };
        let path = format!("{module}.{name}");
        if kind == GlobalKind::Class && self.seen_classes.insert(path.clone()) {
            self.classes.push(path.clone());
        }
        Ok(Value::Global(Rc::new(Global { path, kind })))
    }

    fn run(&mut self) -> R<Value> {
        loop {
            self.op_start = self.pos;
            if self.pos >= self.data.len() {
                return Err(self.err("truncated: the pickle ends without STOP"));
            }
            self.ops += 1;
            if self.ops > self.opts.limits.max_ops {
                return Err(Error::Limit {
                    file: self.file.to_string(),
                    what: "pickle opcodes executed",
                    got: self.ops,
                    limit: self.opts.limits.max_ops,
                });
            }
            let op = self.byte()?;
            match op {
                0x80 => {
                    let proto = self.byte()?;
                    if proto > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => {
                    if self.stack.len() <= self.fence() {
                        return Err(self.err("STOP with an empty stack"));
                    }
                    return self.pop();
                }
                b'(' => {
                    let max = self.opts.limits.max_stack;
                    if self.stack.len() + self.marks.len() >= max {
                        return Err(self.limit("pickle stack depth", self.stack.len() + 1, max));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                0x8a => {
                    let n = usize::from(self.byte()?);
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                0x8b => {
                    let n = self.u32()? as i32;
                    let n = usize::try_from(n).map_err(|_| self.err("negative LONG4 length"))?;
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                b'I' => {
                    let line = self.line(32)?;
                    let v = match line.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(
                            s.parse()
                                .map_err(|_| self.err(format!("bad INT literal {s:?}")))?,
                        ),
                    };
                    self.push(v)?;
                }
                b'L' => {
                    let line = self.line(32)?;
                    let s = line.strip_suffix('L').unwrap_or(&line);
                    let v = s
                        .parse()
                        .map_err(|_| self.err(format!("bad LONG literal {line:?}")))?;
                    self.push(Value::Int(v))?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)))?;
                }
                b'F' => {
                    let line = self.line(64)?;
                    let v = line
                        .parse()
                        .map_err(|_| self.err(format!("bad FLOAT literal {line:?}")))?;
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = usize::from(self.byte()?);
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                b'T' => {
                    let n = self.u32()? as i32;
                    let n =
                        usize::try_from(n).map_err(|_| self.err("negative BINSTRING length"))?;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                b'U' => {
                    let n = usize::from(self.byte()?);
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                b'C' => {
                    let n = usize::from(self.byte()?);
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                0x8e | 0x96 => {
                    let n = self.len_u64()?;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                b')' => {
                    let v = self.tuple(Vec::new())?;
                    self.push(v)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.tuple(items)?;
                    self.push(v)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.tuple(items)?;
                    self.push(v)?;
                }
                b']' => {
                    let v = self.alloc(HeapObj::List(Vec::new()))?;
                    self.push(v)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.check_len(items.len())?;
                    let v = self.alloc(HeapObj::List(items))?;
                    self.push(v)?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    let target = self.top()?.clone();
                    let max = self.opts.limits.max_container_len;
                    let kind = target.kind(&self.heap);
                    match self.heap_mut(&target) {
                        Some(HeapObj::List(list)) => {
                            if list.len() + items.len() > max {
                                let got = list.len() + items.len();
                                return Err(self.limit("container length", got, max));
                            }
                            list.extend(items);
                        }
                        _ => return Err(self.err(format!("APPEND(S) on {kind}, not a list"))),
                    }
                }
                b'}' => {
                    let v = self.alloc(HeapObj::Dict(Dict::default()))?;
                    self.push(v)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(HeapObj::Dict(Dict::default()))?;
                    self.set_items(&v, items)?;
                    self.push(v)?;
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    let target = self.top()?.clone();
                    self.set_items(&target, items)?;
                }
                0x8f => {
                    let v = self.alloc(HeapObj::Set(Vec::new()))?;
                    self.push(v)?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    let max = self.opts.limits.max_container_len;
                    let kind = target.kind(&self.heap);
                    match self.heap_mut(&target) {
                        Some(HeapObj::Set(set)) => {
                            if set.len() + items.len() > max {
                                let got = set.len() + items.len();
                                return Err(self.limit("container length", got, max));
                            }
                            set.extend(items);
                        }
                        _ => return Err(self.err(format!("ADDITEMS on {kind}, not a set"))),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.check_len(items.len())?;
                    let v = self.alloc(HeapObj::Set(items))?;
                    self.push(v)?;
                }
                b'c' => {
                    let module = self.line(256)?;
                    let name = self.line(256)?;
                    let v = self.global(&module, &name)?;
                    self.push(v)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (module.as_str(), name.as_str()) else {
                        return Err(self.err("STACK_GLOBAL operands are not strings"));
                    };
                    let (module, name) = (module.to_string(), name.to_string());
                    let v = self.global(&module, &name)?;
                    self.push(v)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(&func, &args, 0)?;
                    self.push(v)?;
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        let kwargs = self.pop()?;
                        let empty = match &kwargs {
                            Value::Ref(id) => {
                                matches!(self.heap.get(*id), Some(HeapObj::Dict(d)) if d.len() == 0)
                            }
                            _ => false,
                        };
                        if !empty {
                            return Err(self.err("NEWOBJ_EX with keyword arguments"));
                        }
                    }
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_obj(&cls, &args)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?.clone();
                    self.build(&target, state)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v)?;
                }
                b'q' => {
                    let i = self.byte()?;
                    self.memo_put(u32::from(i))?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len())
                        .map_err(|_| self.err("memo index overflow"))?;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let line = self.line(16)?;
                    let i = line
                        .parse()
                        .map_err(|_| self.err(format!("bad PUT index {line:?}")))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.byte()?;
                    self.memo_get(u32::from(i))?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b'g' => {
                    let line = self.line(16)?;
                    let i = line
                        .parse()
                        .map_err(|_| self.err(format!("bad GET index {line:?}")))?;
                    self.memo_get(i)?;
                }
                other => {
                    return Err(Error::UnsupportedOpcode {
                        file: self.file.to_string(),
                        opcode: other,
                        name: opcode_name(other),
                        offset: self.op_start,
                    })
                }
            }
        }
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>) -> R<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("odd number of items for a dict"));
        }
        let max = self.opts.limits.max_container_len;
        let kind = target.kind(&self.heap);
        let file = self.file.to_string();
        let offset = self.op_start;
        match self.heap_mut(target) {
            Some(HeapObj::Dict(d)) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.insert(k, v);
                    if d.len() > max {
                        return Err(Error::Limit {
                            file,
                            what: "container length",
                            got: d.len() as u64,
                            limit: max as u64,
                        });
                    }
                }
                Ok(())
            }
            _ => Err(Error::Pickle {
                file,
                offset,
                reason: format!("SETITEM(S) on {kind}, not a dict"),
            }),
        }
    }

    fn tuple_items(&self, v: &Value, what: &str) -> R<Rc<Tuple>> {
        match v {
            Value::Tuple(t) => Ok(t.clone()),
            other => Err(self.err(format!(
                "{what} expects a tuple of arguments, got {}",
                other.kind(&self.heap)
            ))),
        }
    }

    fn ints(&self, v: &Value, what: &str) -> R<Vec<u64>> {
        let items: &[Value] = match v {
            Value::Tuple(t) => &t.items,
            Value::Ref(id) => match self.heap.get(*id) {
                Some(HeapObj::List(l)) => l,
                _ => return Err(self.err(format!("{what} is not a tuple of ints"))),
            },
            _ => return Err(self.err(format!("{what} is not a tuple of ints"))),
        };
        items
            .iter()
            .map(|x| {
                x.as_int()
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or_else(|| self.err(format!("{what} holds a negative or non-int entry")))
            })
            .collect()
    }

    /// `REDUCE`: the meaning of each whitelisted callable, written out; nothing is called.
    fn reduce(&mut self, func: &Value, args: &Value, nesting: usize) -> R<Value> {
        let Value::Global(g) = func else {
            return Err(self.err(format!(
                "REDUCE on {}, not a whitelisted callable",
                func.kind(&self.heap)
            )));
        };
        let a = self.tuple_items(args, &g.path)?;
        let a = &a.items;
        match g.kind {
            GlobalKind::RebuildTensor => {
                if !(4..=7).contains(&a.len()) {
                    return Err(self.err(format!("{} with {} arguments", g.path, a.len())));
                }
                let Value::Storage(storage) = &a[0] else {
                    return Err(self.err(format!(
                        "{} on {}, not a storage",
                        g.path,
                        a[0].kind(&self.heap)
                    )));
                };
                let offset = a[1]
                    .as_int()
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or_else(|| self.err("tensor storage offset is not a non-negative int"))?;
                let shape = self.ints(&a[2], "tensor size")?;
                let stride = self.ints(&a[3], "tensor stride")?;
                if shape.len() != stride.len() {
                    return Err(self.err(format!(
                        "tensor size {shape:?} and stride {stride:?} differ in rank"
                    )));
                }
                if shape.len() > 64 {
                    return Err(self.err(format!("tensor rank {} is above 64", shape.len())));
                }
                Ok(Value::Tensor(Rc::new(TensorMeta {
                    storage: storage.clone(),
                    offset,
                    shape,
                    stride,
                })))
            }
            GlobalKind::RebuildParameter => match a.first() {
                Some(t @ Value::Tensor(_)) if (3..=4).contains(&a.len()) => Ok(t.clone()),
                _ => Err(self.err(format!("{} expects (tensor, requires_grad, hooks)", g.path))),
            },
            GlobalKind::RebuildFromType => {
                if a.len() != 4 || nesting > 0 {
                    return Err(self.err(format!("{} with unexpected arguments", g.path)));
                }
                match &a[1] {
                    Value::Global(t) if t.kind == GlobalKind::TensorType => {}
                    other => {
                        return Err(self.err(format!(
                            "{} to type {}, not a tensor type",
                            g.path,
                            other.kind(&self.heap)
                        )))
                    }
                }
                let (func, inner) = (a[0].clone(), a[2].clone());
                self.reduce(&func, &inner, nesting + 1)
            }
            GlobalKind::OrderedDict => {
                let d = self.alloc(HeapObj::Dict(Dict::default()))?;
                match a.as_slice() {
                    [] => {}
                    [pairs] => {
                        let items = self.pairs(pairs)?;
                        self.set_items(&d, items)?;
                    }
                    _ => return Err(self.err("OrderedDict with more than one argument")),
                }
                Ok(d)
            }
            GlobalKind::Set => {
                let items = match a.as_slice() {
                    [] => Vec::new(),
                    [Value::Tuple(t)] => t.items.clone(),
                    [Value::Ref(id)] => match self.heap.get(*id) {
                        Some(HeapObj::List(l) | HeapObj::Set(l)) => l.clone(),
                        _ => return Err(self.err("set() of a non-sequence")),
                    },
                    _ => return Err(self.err("set() with unexpected arguments")),
                };
                self.alloc(HeapObj::Set(items))
            }
            GlobalKind::Device => match a.as_slice() {
                [Value::Str(s)] => Ok(Value::Str(s.clone())),
                [Value::Str(s), Value::Int(i)] => Ok(Value::Str(Rc::from(format!("{s}:{i}")))),
                _ => Err(self.err("torch.device with unexpected arguments")),
            },
            GlobalKind::Size => match a.as_slice() {
                [] => self.tuple(Vec::new()),
                [t @ Value::Tuple(_)] => Ok(t.clone()),
                _ => Err(self.err("torch.Size with unexpected arguments")),
            },
            GlobalKind::CodecsEncode => match a.as_slice() {
                [Value::Str(s), Value::Str(enc)]
                    if matches!(&**enc, "latin1" | "latin-1" | "iso-8859-1") =>
                {
                    let bytes: Option<Vec<u8>> =
                        s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
                    let bytes = bytes.ok_or_else(|| self.err("latin1 text above U+00FF"))?;
                    Ok(Value::Bytes(Rc::from(bytes)))
                }
                _ => Err(self.err("_codecs.encode with unexpected arguments")),
            },
            GlobalKind::Class => self.alloc(HeapObj::Object(Object {
                class: g.clone(),
                state: Value::None,
            })),
            GlobalKind::NumpyDType => match a.as_slice() {
                [Value::Str(code), align, copy]
                    if code.len() <= 8 && align.as_int().is_some() && copy.as_int().is_some() =>
                {
                    self.alloc(HeapObj::NumpyDType {
                        code: code.clone(),
                        byteorder: b'=',
                    })
                }
                _ => Err(self.err("numpy.dtype with unexpected arguments")),
            },
            GlobalKind::NumpyScalar => match a.as_slice() {
                [Value::Ref(id), Value::Bytes(b)] => match self.heap.get(*id) {
                    Some(HeapObj::NumpyDType { code, byteorder }) => {
                        numpy_scalar(code, *byteorder, b).map_err(|r| self.err(r))
                    }
                    _ => Err(self.err("numpy scalar of a non-dtype")),
                },
                _ => Err(self.err("numpy scalar with unexpected arguments")),
            },
            GlobalKind::TensorType
            | GlobalKind::Storage(_)
            | GlobalKind::DTypeConst(_)
            | GlobalKind::Opaque => Err(self.err(format!(
                "the global `{}` may be referenced but not called",
                g.path
            ))),
        }
    }

    /// Items of a list/tuple of 2-tuples, flattened to k, v, k, v…
    fn pairs(&self, v: &Value) -> R<Vec<Value>> {
        let items: Vec<Value> = match v {
            Value::Tuple(t) => t.items.clone(),
            Value::Ref(id) => match self.heap.get(*id) {
                Some(HeapObj::List(l)) => l.clone(),
                _ => return Err(self.err("OrderedDict of a non-sequence")),
            },
            _ => return Err(self.err("OrderedDict of a non-sequence")),
        };
        let mut out = Vec::with_capacity(items.len() * 2);
        for it in items {
            match it {
                Value::Tuple(t) if t.items.len() == 2 => out.extend(t.items.iter().cloned()),
                _ => return Err(self.err("OrderedDict item is not a (key, value) pair")),
            }
        }
        Ok(out)
    }

    fn new_obj(&mut self, cls: &Value, args: &Value) -> R<Value> {
        let Value::Global(g) = cls else {
            return Err(self.err(format!("NEWOBJ on {}, not a class", cls.kind(&self.heap))));
        };
        let a = self.tuple_items(args, &g.path)?;
        match g.kind {
            GlobalKind::Class => self.alloc(HeapObj::Object(Object {
                class: g.clone(),
                state: Value::None,
            })),
            GlobalKind::OrderedDict if a.items.is_empty() => {
                self.alloc(HeapObj::Dict(Dict::default()))
            }
            GlobalKind::Set if a.items.is_empty() => self.alloc(HeapObj::Set(Vec::new())),
            _ => Err(self.err(format!("NEWOBJ on `{}`, which is not a class", g.path))),
        }
    }

    fn build(&mut self, target: &Value, state: Value) -> R<()> {
        let kind = target.kind(&self.heap);
        let state_is_dict = match &state {
            Value::Ref(id) => matches!(self.heap.get(*id), Some(HeapObj::Dict(_))),
            _ => false,
        };
        let state_kind = state.kind(&self.heap);
        // numpy's dtype state: (version, byteorder, subarray, names, fields, elsize,
        // alignment, flags[, metadata]); only the byte order matters for a scalar.
        let byteorder = match &state {
            Value::Tuple(t) if (8..=9).contains(&t.items.len()) => t.items[1]
                .as_str()
                .filter(|b| matches!(*b, "<" | ">" | "|" | "="))
                .map(|b| b.as_bytes()[0]),
            _ => None,
        };
        match self.heap_mut(target) {
            Some(HeapObj::Object(o)) => {
                o.state = state;
                Ok(())
            }
            Some(HeapObj::NumpyDType { byteorder: bo, .. }) => match byteorder {
                Some(b) => {
                    *bo = b;
                    Ok(())
                }
                None => Err(self.err(format!("BUILD on a numpy dtype with {state_kind}"))),
            },
            // An OrderedDict's attributes (a state_dict's `_metadata`): checked, then dropped.
            Some(HeapObj::Dict(_)) if state_is_dict || matches!(state, Value::None) => Ok(()),
            Some(HeapObj::Dict(_)) => Err(self.err(format!("BUILD on a dict with {state_kind}"))),
            _ => Err(self.err(format!("BUILD on {kind}, which is not an object"))),
        }
    }

    fn persistent_load(&mut self, pid: &Value) -> R<Value> {
        let Value::Tuple(t) = pid else {
            return Err(self.err(format!(
                "persistent id is {}, not a tuple",
                pid.kind(&self.heap)
            )));
        };
        let [tag, ty, key, location, numel] = t.items.as_slice() else {
            return Err(self.err(format!(
                "persistent id has {} fields, expected 5 ('storage', type, key, location, numel)",
                t.items.len()
            )));
        };
        if tag.as_str() != Some("storage") {
            return Err(self.err("persistent id does not start with 'storage'"));
        }
        let dtype = match ty {
            Value::Global(g) => match g.kind {
                GlobalKind::Storage(d) => d,
                _ => return Err(self.err(format!("`{}` is not a storage type", g.path))),
            },
            other => {
                return Err(self.err(format!(
                    "storage type is {}, not a storage class",
                    other.kind(&self.heap)
                )))
            }
        };
        let key = key
            .as_str()
            .filter(|k| {
                !k.is_empty()
                    && k.len() <= 64
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .ok_or_else(|| self.err("storage key is not a short alphanumeric string"))?
            .to_string();
        let location = location
            .as_str()
            .filter(|l| l.len() <= 64)
            .ok_or_else(|| self.err("storage location is not a short string"))?
            .to_string();
        let numel = numel
            .as_int()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| self.err("storage numel is not a non-negative int"))?;
        Ok(Value::Storage(Rc::new(Storage {
            dtype,
            key,
            location,
            numel,
        })))
    }
}

/// The value of a numpy scalar of dtype `code` (`f8`, `i4`, `u1`, `b1`…) and byte order
/// `byteorder`, from its raw bytes.
fn numpy_scalar(code: &str, byteorder: u8, b: &[u8]) -> Result<Value, String> {
    let bad =
        || format!("numpy scalar of dtype `{code}` is not supported (ints, floats and bools are)");
    let (Some(kind), Some(size)) = (code.get(..1), code.get(1..)) else {
        return Err(bad());
    };
    let size: usize = size.parse().map_err(|_| bad())?;
    if b.len() != size {
        return Err(format!(
            "numpy `{code}` scalar of {} bytes, expected {size}",
            b.len()
        ));
    }
    let mut le = b.to_vec();
    if byteorder == b'>' {
        le.reverse();
    }
    let wide = |signed: bool| {
        let fill = if signed && le.last().is_some_and(|x| x & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut a = [fill; 8];
        a[..le.len()].copy_from_slice(&le);
        a
    };
    Ok(match (kind, size) {
        ("f", 2) => Value::Float(f64::from(crate::tensor::f16_to_f32(u16::from_le_bytes([
            le[0], le[1],
        ])))),
        ("f", 4) => Value::Float(f64::from(f32::from_le_bytes([le[0], le[1], le[2], le[3]]))),
        ("f", 8) => Value::Float(f64::from_le_bytes(wide(false))),
        ("i", 1 | 2 | 4 | 8) => Value::Int(i64::from_le_bytes(wide(true))),
        ("u", 1 | 2 | 4 | 8) => {
            let v = u64::from_le_bytes(wide(false));
            Value::Int(i64::try_from(v).map_err(|_| format!("numpy uint64 {v} exceeds i64"))?)
        }
        ("b", 1) => Value::Bool(le[0] != 0),
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(data: &[u8]) -> Result<Loaded, Error> {
        load("t.pkl", data, &ReadOptions::default())
    }

    #[test]
    fn whitelist() {
        assert_eq!(
            classify("torch._utils", "_rebuild_tensor_v2", &[]),
            Some(GlobalKind::RebuildTensor)
        );
        assert_eq!(
            classify("torch", "HalfStorage", &[]),
            Some(GlobalKind::Storage(DType::F16))
        );
        assert_eq!(
            classify("torch.nn.modules.linear", "Linear", &[]),
            Some(GlobalKind::Class)
        );
        assert_eq!(classify("__builtin__", "set", &[]), Some(GlobalKind::Set));
        assert_eq!(
            classify("torch.cuda", "FloatStorage", &[]),
            Some(GlobalKind::Storage(DType::F32))
        );
        assert_eq!(classify("torch.cuda", "synchronize", &[]), None);
        assert_eq!(classify("posix", "system", &[]), None);
        assert_eq!(classify("builtins", "eval", &[]), None);
        assert_eq!(classify("builtins", "getattr", &[]), None);
        assert_eq!(classify("torch", "load", &[]), None);
        assert_eq!(classify("torch.nn.modules.module", "register_x", &[]), None);
        assert_eq!(classify("my.model", "Net", &[]), None);
        assert_eq!(
            classify("my.model", "Net", &["my.model.Net".to_string()]),
            Some(GlobalKind::Class)
        );
    }

    #[test]
    fn scalars_and_containers() {
        // (1, -2, 3.5, 'hé', b'x', [None, True], {'k': 300})
        let mut p = vec![0x80, 2, b'(', b'K', 1, b'J'];
        p.extend((-2i32).to_le_bytes());
        p.push(b'G');
        p.extend(3.5f64.to_be_bytes());
        p.extend([0x8c, 3]);
        p.extend("hé".as_bytes());
        p.extend([
            b'C', 1, b'x', b']', b'(', b'N', 0x88, b'e', b'}', 0x8c, 1, b'k', b'M',
        ]);
        p.extend(300u16.to_le_bytes());
        p.extend([b's', b't', b'.']);
        let l = run(&p).unwrap();
        let Value::Tuple(t) = &l.root else { panic!() };
        assert_eq!(t.items.len(), 7);
        assert_eq!(t.items[1].as_int(), Some(-2));
        assert_eq!(t.items[3].as_str(), Some("hé"));
        let Value::Ref(d) = &t.items[6] else { panic!() };
        let HeapObj::Dict(d) = &l.heap[*d] else {
            panic!()
        };
        assert_eq!(d.get("k").and_then(Value::as_int), Some(300));
    }

    #[test]
    fn memo_shares_mutable_values() {
        // l = []; memo[0] = l; (l, l.append(1) via memo) -> both tuple slots see [1]
        let p = [
            0x80, 2, b']', b'q', 0, b'K', 1, b'a', b'0', b'h', 0, b'h', 0, 0x86, b'.',
        ];
        let l = run(&p).unwrap();
        let Value::Tuple(t) = &l.root else { panic!() };
        for v in &t.items {
            let Value::Ref(id) = v else { panic!() };
            let HeapObj::List(items) = &l.heap[*id] else {
                panic!()
            };
            assert_eq!(items.len(), 1);
        }
    }

    #[test]
    fn long1_sign_extension() {
        let p = [0x80, 2, 0x8a, 2, 0x00, 0x80, b'.'];
        assert_eq!(run(&p).unwrap().root.as_int(), Some(-32768));
        let p = [0x80, 2, 0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'.'];
        assert!(matches!(run(&p), Err(Error::Pickle { .. })));
    }

    #[test]
    fn errors_name_offsets() {
        let p = b"\x80\x02cposix\nsystem\n.";
        match run(p) {
            Err(Error::ForbiddenGlobal { global, offset, .. }) => {
                assert_eq!(global, "posix.system");
                assert_eq!(offset, 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run(b"\x80\x02."),
            Err(Error::Pickle { offset: 2, .. })
        ));
        assert!(matches!(run(b"\x80\x02N"), Err(Error::Pickle { .. })));
        assert!(matches!(
            run(b"\x80\x02i"),
            Err(Error::UnsupportedOpcode { opcode: b'i', .. })
        ));
        // POP below a MARK is an underflow, not a silent read of older values.
        assert!(run(b"(N0t.").is_ok());
        assert!(matches!(run(b"N((0a."), Err(Error::Pickle { .. })));
    }

    #[test]
    fn limits_bound_memo_and_depth() {
        let opts = ReadOptions {
            limits: crate::Limits {
                max_memo: 2,
                max_depth: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        let p = b"Nq\x00q\x01q\x02.";
        assert!(matches!(
            load("t", p, &opts),
            Err(Error::Limit {
                what: "memo entries",
                ..
            })
        ));
        let p = b")\x85\x85\x85\x85.";
        assert!(matches!(
            load("t", p, &opts),
            Err(Error::Limit {
                what: "tuple nesting depth",
                ..
            })
        ));
    }

    /// `numpy.<core>.multiarray.scalar(numpy.dtype(code, False, True) + BUILD state, bytes)`
    /// as protocol 2 pickles it (bytes through `_codecs.encode(latin1 text)`).
    fn np_scalar(core: &str, code: &str, order: &str, bytes: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        let s = |p: &mut Vec<u8>, t: &str| {
            p.push(b'X');
            p.extend((t.len() as u32).to_le_bytes());
            p.extend(t.as_bytes());
        };
        p.extend(format!("c{core}.multiarray\nscalar\ncnumpy\ndtype\n").as_bytes());
        s(&mut p, code);
        p.extend([0x89, 0x88, 0x87, b'R', b'(', b'K', 3]);
        s(&mut p, order);
        p.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
        p.extend(b"c_codecs\nencode\n");
        let latin1: String = bytes.iter().map(|&b| char::from(b)).collect();
        s(&mut p, &latin1);
        s(&mut p, "latin1");
        p.extend([0x86, b'R', 0x86, b'R', b'.']);
        p
    }

    #[test]
    fn numpy_scalars_become_values() {
        let f = |core, code, order, b: &[u8]| run(&np_scalar(core, code, order, b)).map(|l| l.root);
        let v = f("numpy._core", "f8", "<", &0.25f64.to_le_bytes()).unwrap();
        assert!(matches!(v, Value::Float(x) if x == 0.25));
        let v = f("numpy.core", "f4", "<", &1.5f32.to_le_bytes()).unwrap();
        assert!(matches!(v, Value::Float(x) if x == 1.5));
        let v = f("numpy.core", "f4", ">", &1.5f32.to_be_bytes()).unwrap();
        assert!(matches!(v, Value::Float(x) if x == 1.5));
        let v = f("numpy.core", "f2", "<", &0x3c00u16.to_le_bytes()).unwrap();
        assert!(matches!(v, Value::Float(x) if x == 1.0));
        assert_eq!(
            f("numpy._core", "i8", "<", &(-42i64).to_le_bytes())
                .unwrap()
                .as_int(),
            Some(-42)
        );
        assert_eq!(
            f("numpy._core", "i2", "<", &(-2i16).to_le_bytes())
                .unwrap()
                .as_int(),
            Some(-2)
        );
        assert_eq!(
            f("numpy._core", "u4", "<", &u32::MAX.to_le_bytes())
                .unwrap()
                .as_int(),
            Some(4294967295)
        );
        assert!(matches!(
            f("numpy._core", "b1", "|", &[1]).unwrap(),
            Value::Bool(true)
        ));
        // Refused without running anything: other dtypes, wrong lengths, huge uint64.
        for (code, b) in [
            ("c16", &[0u8; 16][..]),
            ("f8", &[0u8; 4][..]),
            ("u8", &[0xff; 8][..]),
            ("O8", &[0u8; 8][..]),
        ] {
            assert!(
                matches!(f("numpy._core", code, "<", b), Err(Error::Pickle { .. })),
                "{code}"
            );
        }
        // Other numpy callables stay forbidden.
        let p = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n.";
        assert!(matches!(run(p), Err(Error::ForbiddenGlobal { .. })));
    }
}
