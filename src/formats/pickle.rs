//! `torch.save` files (the zip format of torch >= 1.6: Hugging Face `pytorch_model.bin`, state
//! dicts) and TorchScript archives (`torch.jit.save`: OpenAI's `ViT-*.pt`) read in Rust without
//! Python. The pickle is run by a small machine that knows only the opcodes these writers use and
//! five kinds of globals: `collections.OrderedDict`, the tensor rebuild functions
//! (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`), the typed storages
//! (`torch.FloatStorage`, ...) and TorchScript module classes (`__torch__.*`), which only become
//! named bags of attributes. Any other global (`os.system`, a Python class) is an error naming
//! it; nothing is ever executed. (libtorch's own C++ unpickler cannot serve: it turns
//! `OrderedDict`, which every state dict is, into None.)

use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

/// A checkpoint's pickle holds names, shapes and storage keys, never tensor data: far below this.
const MAX_PICKLE_BYTES: u64 = 1 << 30;

/// What a pickle archive holds: its tensors, nested dicts and module attributes flattened to
/// dotted names (`visual.conv1.weight`), and the TorchScript module classes it names (empty for
/// a `torch.save` file), e.g. `__torch__.clip.model.QuickGELU`.
pub struct Pickled {
    pub tensors: Vec<(String, Tensor)>,
    pub classes: BTreeSet<String>,
}

/// The tensors and module classes of the `torch.save` file or TorchScript archive at `path`.
pub fn read(path: &Path) -> Result<Pickled> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| {
        format!(
            "{} is not a torch.save archive (zip format, torch >= 1.6)",
            path.display()
        )
    })?;
    let pkl = archive
        .file_names()
        .map(String::from)
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .with_context(|| format!("{}: no data.pkl in the archive", path.display()))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let pickle = entry(&mut archive, &pkl, MAX_PICKLE_BYTES)?;
    let mut machine = Machine {
        archive: &mut archive,
        prefix,
        storages: HashMap::new(),
        classes: BTreeSet::new(),
    };
    let value = machine
        .run(&pickle)
        .with_context(|| format!("{}: refused", path.display()))?;
    let mut tensors = Vec::new();
    flatten(value, String::new(), &mut tensors);
    Ok(Pickled {
        tensors,
        classes: machine.classes,
    })
}

/// An archive member of at most `max` bytes (its header's size is not trusted for more: a
/// hostile archive could claim terabytes).
fn entry(archive: &mut zip::ZipArchive<std::fs::File>, name: &str, max: u64) -> Result<Vec<u8>> {
    let f = archive
        .by_name(name)
        .with_context(|| format!("no {name} in the archive"))?;
    if f.size() > max {
        bail!(
            "{name} is {} bytes, more than the {max} it can hold",
            f.size()
        );
    }
    let mut bytes = Vec::with_capacity(f.size() as usize);
    f.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        bail!("{name} holds more than the {max} bytes it can");
    }
    Ok(bytes)
}

/// Tensors of nested dicts and module objects under their dotted key paths; other values are
/// left out.
fn flatten(value: Value, prefix: String, out: &mut Vec<(String, Tensor)>) {
    match value {
        Value::Tensor(t) => out.push((prefix, t)),
        Value::Object(state) => flatten(*state, prefix, out),
        Value::Dict(items) => {
            for (k, v) in items {
                if let Value::Str(k) = k {
                    let name = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(v, name, out);
                }
            }
        }
        _ => {}
    }
}

enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// An allowed global, `module.name`.
    Global(String),
    /// A persistent id: a storage of the archive.
    Storage(Tensor),
    /// A TorchScript module: its attributes (a dict, once BUILD has set them).
    Object(Box<Value>),
    Tensor(Tensor),
}

impl Clone for Value {
    fn clone(&self) -> Self {
        match self {
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Float(f) => Value::Float(*f),
            Value::Str(s) => Value::Str(s.clone()),
            Value::Tuple(v) => Value::Tuple(v.clone()),
            Value::List(v) => Value::List(v.clone()),
            Value::Dict(v) => Value::Dict(v.clone()),
            Value::Global(g) => Value::Global(g.clone()),
            Value::Storage(t) => Value::Storage(t.shallow_clone()),
            Value::Object(state) => Value::Object(state.clone()),
            Value::Tensor(t) => Value::Tensor(t.shallow_clone()),
        }
    }
}

const ALLOWED: [&str; 3] = [
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
];

/// TorchScript's typed-container helpers (older archives wrap `List[int]` attributes and the
/// like in them); each returns its first argument, so they are read as that argument.
const SCRIPT_IDENTITIES: [&str; 7] = [
    "torch.jit._pickle.build_intlist",
    "torch.jit._pickle.build_floatlist",
    "torch.jit._pickle.build_doublelist",
    "torch.jit._pickle.build_boollist",
    "torch.jit._pickle.build_tensorlist",
    "torch.jit._pickle.build_genericlist",
    "torch.jit._pickle.restore_type_tag",
];

/// TorchScript's module classes: `__torch__.` then the Python module path and class name.
const SCRIPT_CLASS: &str = "__torch__.";

/// The tensor kind of a typed storage global (`torch.FloatStorage`, ...).
fn storage_kind(global: &str) -> Option<Kind> {
    Some(match global.strip_prefix("torch.")? {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

struct Machine<'a> {
    archive: &'a mut zip::ZipArchive<std::fs::File>,
    prefix: String,
    storages: HashMap<String, Tensor>,
    classes: BTreeSet<String>,
}

impl Machine<'_> {
    /// Executes the pickle program. One long match on purpose: an opcode interpreter reads best
    /// as one table of opcodes, each arm a few lines.
    fn run(&mut self, code: &[u8]) -> Result<Value> {
        let mut r = Reader { code, at: 0 };
        let (mut stack, mut marks, mut memo): (Vec<Value>, Vec<usize>, HashMap<u32, Value>) =
            (Vec::new(), Vec::new(), HashMap::new());
        let pop = |stack: &mut Vec<Value>| stack.pop().context("pickle stack underflow");
        loop {
            let op = r.byte()?;
            match op {
                0x80 => {
                    r.byte()?; // PROTO n
                }
                0x95 => {
                    r.take(8)?; // FRAME length
                }
                b'.' => return pop(&mut stack),
                b'(' => marks.push(stack.len()),
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                b'K' => stack.push(Value::Int(r.byte()? as i64)),
                b'M' => stack.push(Value::Int(u16::from_le_bytes(r.array()?) as i64)),
                b'J' => stack.push(Value::Int(i32::from_le_bytes(r.array()?) as i64)),
                0x8a => {
                    let n = r.byte()? as usize;
                    let bytes = r.take(n)?;
                    if n > 8 {
                        bail!("an integer of {n} bytes");
                    }
                    let mut v: i64 = 0;
                    for (i, b) in bytes.iter().enumerate() {
                        v |= (*b as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // two's complement of n bytes
                    }
                    stack.push(Value::Int(v));
                }
                b'G' => stack.push(Value::Float(f64::from_be_bytes(r.array()?))),
                b'X' => {
                    let n = u32::from_le_bytes(r.array()?) as usize;
                    stack.push(Value::Str(String::from_utf8(r.take(n)?.to_vec())?));
                }
                0x8c => {
                    let n = r.byte()? as usize;
                    stack.push(Value::Str(String::from_utf8(r.take(n)?.to_vec())?));
                }
                b'c' => {
                    let module = r.line()?;
                    let name = r.line()?;
                    let global = format!("{module}.{name}");
                    if !ALLOWED.contains(&global.as_str())
                        && !SCRIPT_IDENTITIES.contains(&global.as_str())
                        && storage_kind(&global).is_none()
                        && !global.starts_with(SCRIPT_CLASS)
                    {
                        bail!("the pickle names the global `{global}`, which a checkpoint has no use for (only tensors, storages, OrderedDict and TorchScript module classes are allowed); it was not run");
                    }
                    stack.push(Value::Global(global));
                }
                b')' => stack.push(Value::Tuple(vec![])),
                b'}' => stack.push(Value::Dict(vec![])),
                b']' => stack.push(Value::List(vec![])),
                b't' => {
                    let items = since_mark(&mut stack, &mut marks)?;
                    stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        bail!("pickle stack underflow");
                    }
                    let items = stack.split_off(stack.len() - n);
                    stack.push(Value::Tuple(items));
                }
                b'q' => {
                    let k = r.byte()? as u32;
                    memo.insert(k, stack.last().context("empty stack")?.clone());
                }
                b'r' => {
                    let k = u32::from_le_bytes(r.array()?);
                    memo.insert(k, stack.last().context("empty stack")?.clone());
                }
                0x94 => {
                    let k = memo.len() as u32;
                    memo.insert(k, stack.last().context("empty stack")?.clone());
                }
                b'h' => {
                    let k = r.byte()? as u32;
                    stack.push(memo.get(&k).context("unknown memo key")?.clone());
                }
                b'j' => {
                    let k = u32::from_le_bytes(r.array()?);
                    stack.push(memo.get(&k).context("unknown memo key")?.clone());
                }
                b's' => {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    match stack.last_mut() {
                        Some(Value::Dict(d)) => d.push((k, v)),
                        _ => bail!("SETITEM on something that is not a dict"),
                    }
                }
                b'u' => {
                    let items = since_mark(&mut stack, &mut marks)?;
                    let Some(Value::Dict(d)) = stack.last_mut() else {
                        bail!("SETITEMS on something that is not a dict");
                    };
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
                b'a' => {
                    let v = pop(&mut stack)?;
                    match stack.last_mut() {
                        Some(Value::List(l)) => l.push(v),
                        _ => bail!("APPEND on something that is not a list"),
                    }
                }
                b'e' => {
                    let items = since_mark(&mut stack, &mut marks)?;
                    match stack.last_mut() {
                        Some(Value::List(l)) => l.extend(items),
                        _ => bail!("APPENDS on something that is not a list"),
                    }
                }
                0x81 => {
                    // NEWOBJ of a TorchScript module class: an empty object for BUILD to fill.
                    pop(&mut stack)?;
                    match pop(&mut stack)? {
                        Value::Global(g) if g.starts_with(SCRIPT_CLASS) => {
                            self.classes.insert(g);
                            stack.push(Value::Object(Box::new(Value::None)));
                        }
                        _ => bail!("NEWOBJ of something that is not a TorchScript class"),
                    }
                }
                b'b' => {
                    // BUILD: a module's attributes are kept; an OrderedDict's state (a state
                    // dict's `_metadata`) is not needed.
                    let state = pop(&mut stack)?;
                    if let Some(Value::Object(attributes)) = stack.last_mut() {
                        **attributes = state;
                    }
                }
                b'Q' => {
                    let pid = pop(&mut stack)?;
                    stack.push(self.persistent(pid)?);
                }
                b'R' => {
                    let args = pop(&mut stack)?;
                    let callable = pop(&mut stack)?;
                    stack.push(self.reduce(callable, args)?);
                }
                other => bail!("pickle opcode 0x{other:02x} is not one torch.save writes"),
            }
        }
    }

    /// `('storage', torch.XStorage, key, location, numel)`: the archive's `data/<key>` bytes.
    fn persistent(&mut self, pid: Value) -> Result<Value> {
        let Value::Tuple(items) = pid else {
            bail!("a persistent id that is not a tuple");
        };
        let [Value::Str(tag), Value::Global(kind), Value::Str(key), _, Value::Int(numel)] =
            items.as_slice()
        else {
            bail!("a persistent id that is not a storage");
        };
        let kind = storage_kind(kind)
            .filter(|_| tag == "storage")
            .context("a persistent id that is not a storage")?;
        if let Some(t) = self.storages.get(key) {
            return Ok(Value::Storage(t.shallow_clone()));
        }
        let expected = usize::try_from(*numel)
            .ok()
            .and_then(|n| n.checked_mul(kind.elt_size_in_bytes()))
            .with_context(|| format!("storage {key} claims {numel} elements"))?;
        let bytes = entry(
            self.archive,
            &format!("{}data/{key}", self.prefix),
            expected as u64,
        )?;
        if bytes.len() != expected {
            bail!(
                "storage {key} has {} bytes for {numel} elements of {kind:?}",
                bytes.len()
            );
        }
        let t = Tensor::f_from_data_size(&bytes, &[*numel], kind)?;
        self.storages.insert(key.clone(), t.shallow_clone());
        Ok(Value::Storage(t))
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value> {
        let (Value::Global(g), Value::Tuple(args)) = (callable, args) else {
            bail!("a call of something that is not an allowed global");
        };
        match g.as_str() {
            "collections.OrderedDict" => Ok(Value::Dict(vec![])),
            g if SCRIPT_IDENTITIES.contains(&g) => args
                .into_iter()
                .next()
                .context("a TorchScript helper without an argument"),
            "torch._utils._rebuild_parameter" => match args.into_iter().next() {
                Some(Value::Tensor(t)) => Ok(Value::Tensor(t)),
                _ => bail!("_rebuild_parameter without a tensor"),
            },
            "torch._utils._rebuild_tensor_v2" => {
                let [Value::Storage(storage), Value::Int(offset), Value::Tuple(size), Value::Tuple(stride), ..] =
                    args.as_slice()
                else {
                    bail!("_rebuild_tensor_v2 with unexpected arguments");
                };
                let ints = |v: &[Value]| -> Result<Vec<i64>> {
                    v.iter()
                        .map(|x| match x {
                            Value::Int(i) => Ok(*i),
                            _ => bail!("a tensor size or stride that is not an integer"),
                        })
                        .collect()
                };
                let (size, stride) = (ints(size)?, ints(stride)?);
                // The view must lie inside its storage (as_strided would read past it otherwise).
                let last = *offset
                    + size
                        .iter()
                        .zip(&stride)
                        .map(|(n, s)| (n - 1).max(0) * s)
                        .sum::<i64>();
                let numel = storage.size()[0];
                if *offset < 0
                    || stride.iter().any(|&s| s < 0)
                    || (size.iter().all(|&n| n > 0) && last >= numel)
                {
                    bail!("a tensor view outside its storage");
                }
                Ok(Value::Tensor(
                    storage
                        .f_as_strided(&size, &stride, Some(*offset))?
                        .f_contiguous()?,
                ))
            }
            _ => bail!("`{g}` cannot be called"),
        }
    }
}

/// The items pushed since the last MARK; a MARK the stack has since been popped below is an
/// error (a hostile pickle), not a panic.
fn since_mark(stack: &mut Vec<Value>, marks: &mut Vec<usize>) -> Result<Vec<Value>> {
    let m = marks
        .pop()
        .context("an opcode needs a MARK the pickle did not set")?;
    if m > stack.len() {
        bail!("the pickle popped its stack below a MARK");
    }
    Ok(stack.split_off(m))
}

struct Reader<'a> {
    code: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.code.len());
        let end = end.context("the pickle ends early")?;
        let out = &self.code[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.code[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .context("the pickle ends early")?;
        let s = String::from_utf8(rest[..n].to_vec())?;
        self.at += n + 1;
        Ok(s)
    }
}
