//! A module's source: WebAssembly text turned into a binary with errors
//! that name the file and line, and a binary's validation error traced back
//! to the text's line.

use std::borrow::Cow;
use std::path::Path;

use crate::error::PolicyError;

/// The binary of `bytes`: as is when it is a binary, compiled when it is
/// text. A syntax error names `name` with its line and column.
pub(crate) fn to_binary<'a>(name: &str, bytes: &'a [u8]) -> Result<Cow<'a, [u8]>, PolicyError> {
    if bytes.starts_with(b"\0asm") {
        return Ok(Cow::Borrowed(bytes));
    }
    wat::Parser::new()
        .parse_bytes(Some(Path::new(name)), bytes)
        .map_err(|e| PolicyError::Compile {
            module: name.to_owned(),
            message: e.to_string(),
        })
}

/// `message` (wasmtime's error compiling `binary`), with the source line
/// of the offset it names when the module came from text: `... at offset
/// 33: type mismatch ...` gains `, at threshold.wat:31:10`.
pub(crate) fn explain(name: &str, source: &[u8], binary: &[u8], message: &str) -> String {
    let at = offset_in(message).and_then(|offset| {
        if source.starts_with(b"\0asm") {
            return None;
        }
        let text = std::str::from_utf8(source).ok()?;
        line_of(text, binary, offset)
    });
    match at {
        Some((line, col)) => format!("{message}, at {name}:{line}:{col}"),
        None => message.to_owned(),
    }
}

/// The offset in `at offset 33` (wasmtime) or `(at offset 0x21)`
/// (wasmparser).
fn offset_in(message: &str) -> Option<usize> {
    let rest = &message[message.find("at offset ")? + "at offset ".len()..];
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    match digits.strip_prefix("0x") {
        Some(hex) => usize::from_str_radix(hex, 16).ok(),
        None => digits.parse().ok(),
    }
}

/// The 1-based line and column in `text` of the instruction at byte
/// `offset` of `binary` (its encoding): the code entry holding the offset
/// is the n-th function defined in the text, and its operators are the
/// text's instructions in order.
fn line_of(text: &str, binary: &[u8], offset: usize) -> Option<(usize, usize)> {
    let (func, op) = operator_at(binary, offset)?;
    let mut buf = wast::parser::ParseBuffer::new(text).ok()?;
    buf.track_instr_spans(true);
    let wat = wast::parser::parse::<wast::Wat>(&buf).ok()?;
    let wast::Wat::Module(module) = wat else {
        return None;
    };
    let wast::core::ModuleKind::Text(fields) = module.kind else {
        return None;
    };
    let f = fields
        .iter()
        .filter_map(|f| match f {
            wast::core::ModuleField::Func(f) => Some(f),
            _ => None,
        })
        .filter(|f| matches!(f.kind, wast::core::FuncKind::Inline { .. }))
        .nth(func)?;
    let wast::core::FuncKind::Inline { expression, .. } = &f.kind else {
        return None;
    };
    let spans = expression.instr_spans.as_deref().unwrap_or(&[]);
    // Past the last instruction is the function's implicit `end`, where a
    // wrong result type shows: the last instruction made it. Without
    // instructions, the function itself.
    let span = spans.get(op).or(spans.last()).copied().unwrap_or(f.span);
    let (line, col) = span.linecol_in(text);
    Some((line + 1, col + 1))
}

/// Which defined function (0-based, in code section order) and which of
/// its operators `offset` falls in.
fn operator_at(binary: &[u8], offset: usize) -> Option<(usize, usize)> {
    let offset = offset as u64;
    let mut func = 0;
    for payload in wasmparser::Parser::new(0).parse_all(binary) {
        let wasmparser::Payload::CodeSectionEntry(body) = payload.ok()? else {
            continue;
        };
        if body.range().contains(&offset) {
            let mut ops = body.get_operators_reader().ok()?;
            let mut index = None;
            let mut i = 0;
            while !ops.eof() {
                let (_, at) = ops.read_with_offset().ok()?;
                if (at as u64) > offset {
                    break;
                }
                index = Some(i);
                i += 1;
            }
            return Some((func, index.unwrap_or(0)));
        }
        func += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_error_in_text_names_the_file_line_and_column() {
        let text = "(module\n  (func (export \"f\") (result i64)\n    i32.const 1))\n";
        let binary = to_binary("bad.wat", text.as_bytes()).unwrap();
        let engine = wasmtime::Engine::default();
        let err = wasmtime::Module::new(&engine, &binary).unwrap_err();
        let message = explain("bad.wat", text.as_bytes(), &binary, &format!("{err:#}"));
        assert!(message.contains("at bad.wat:3:"), "{message}");
    }

    #[test]
    fn a_syntax_error_names_the_file_and_line() {
        let Err(PolicyError::Compile { message, .. }) = to_binary(
            "dir/bad.wat",
            b"(module\n  (func (result i64)\n    i64.konst 1))\n",
        ) else {
            panic!("accepted");
        };
        assert!(message.contains("dir/bad.wat:3:"), "{message}");
    }
}
