"""The native formatter: machine code generated from the layouts that formats ring chunks.

The native hook appends packed records to its ring (``runtime.ring``). ``format_chunk``
walks a chunk of them and writes what each record's layout (``layouts``) shows into a
large output buffer, which Python then writes with one system call: no Python runs per
record. What a record does not carry, the probe knows; Python puts it in a table indexed
by the record's ident (``IdentInfo``: pid, eip, log fields, layout, and the process name
already encoded for each text style by the Python formatter's ``text_bytes``).

Everything is generated with ``llvmlite.ir`` from data: the record head from
``ring.RecordHead``, the machine state in the ring from ``ring.HEADER_FIELDS``, the
binary header and the header values from ``vm.logrecord.HEADER``, the guest clock's
instruction-to-time rule from ``runtime.clock``'s constants, and each output layout from
its pieces. The module is compiled once per process through the JIT engine's library
entry point.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import re
import struct
from collections.abc import Callable
from ctypes import Structure, c_uint32, c_uint64, c_void_p

from llvmlite import ir

from dprobes.runtime import clock, ring
from dprobes.runtime.logformat.layouts import (
    Binary,
    Dump,
    Fields,
    Hex,
    Layout,
    Number,
    Pieces,
    Raw,
    Style,
    Text,
)
from dprobes.runtime.logformat.python import ASCII_MASK, PRINTABLE, hex_bytes, text_bytes
from dprobes.runtime.logformat.writer import ProbeLog
from dprobes.vm.logrecord import (
    BASE,
    BASE_BITS,
    CPU,
    CPU_CODE,
    FACILITY_ID,
    HEADER,
    MICROSECONDS_PER_SECOND,
    NS_PER_MICROSECOND,
    NS_PER_SECOND,
    HeaderBit,
    HeaderValue,
    Shown,
)
from dprobes.vm.program import LogField

I1, I8, I16, I32, I64 = (ir.IntType(bits) for bits in (1, 8, 16, 32, 64))
PTR = ir.PointerType()
INTS = {1: I8, 2: I16, 4: I32, 8: I64}

TEXT_FORMS: tuple[Style | None, ...] = (Style.TEXT, Style.JSON_TEXT, None)
"""The encodings of the process name a probe's table entry holds, by index: for each
text style, and (None) as the binary header packs it."""
NUMERIC_VALUES = tuple(
    attr
    for field in HEADER
    for value in field.values
    if value.shown is not Shown.TEXT
    for attr in value.hit
)
"""The numbers a record's header can show (``HitInfo`` attributes), by slot."""
IDENT_VALUES = tuple(
    attr
    for field in HEADER
    for value in field.values
    if value.ring is None and value.shown is not Shown.TEXT
    for attr in value.hit
)
"""The numbers the probe knows (the rest come from the ring)."""


class IdentInfo(Structure):
    """What a probe (a ring record's ident) knows of its records' headers and target."""

    _fields_ = [
        *((name, c_uint32) for name in IDENT_VALUES),
        ("fields", c_uint32),
        ("layout", c_uint32),
        ("room", c_uint32),
        ("text_len", c_uint32 * len(TEXT_FORMS)),
        ("text", c_void_p * len(TEXT_FORMS)),
    ]


class FormatJob(Structure):
    """One call of the formatter: the chunk and where it is, the output buffer and how
    full it is, and the records done (the formatter advances ``at``, ``out_at`` and
    ``records`` and stops early when the next record might not fit)."""

    _fields_ = [
        ("chunk", c_void_p),
        ("at", c_uint64),
        ("end", c_uint64),
        ("idents", c_void_p),
        ("out", c_void_p),
        ("out_at", c_uint64),
        ("out_size", c_uint64),
        ("records", c_uint64),
    ]


CTYPES_IR = {c_uint32: I32, c_uint64: I64, c_void_p: PTR, ctypes.c_uint16: I16}


def ir_struct(structure: type[Structure]) -> ir.LiteralStructType:
    """The IR type of a ctypes structure (fields of the scalar and array kinds used here)."""
    members = []
    for _, kind in structure._fields_:
        if issubclass(kind, ctypes.Array):
            members.append(ir.ArrayType(CTYPES_IR[kind._type_], kind._length_))
        else:
            members.append(CTYPES_IR[kind])
    return ir.LiteralStructType(members)


def field_index(structure: type[Structure], name: str) -> int:
    return [field for field, _ in structure._fields_].index(name)


RECORD = ir.LiteralStructType(
    [I32, I32, I32, I32, PTR, PTR, ir.ArrayType(I32, len(NUMERIC_VALUES))]
)
"""One record as a layout function reads it: major, minor, log fields, data length, data,
the probe's ``IdentInfo``, the header's numbers (``NUMERIC_VALUES``)."""
R_MAJOR, R_MINOR, R_FIELDS, R_LEN, R_DATA, R_INFO, R_VALUES = range(7)

EXTRA_ROOM = 1024
"""Output bytes a record may need beyond its process name's texts and its data's."""
ROOM_PER_DATA_BYTE = 8
"""Output bytes a data byte may need in any layout (a hex dump needs under 5)."""
HEX_SLOT = 8
"""Bytes a byte's ``Hex`` text may take (stored whole: a slot is written with one store,
so the output needs this much room past the last byte's text too)."""


def part_codes(code: str) -> list[str]:
    """The ``struct`` codes of a value's parts: ``II`` -> ``I``, ``I``; ``16s`` stays."""
    return [
        count + kind if kind == "s" else kind
        for count, kind in re.findall(r"(\d*)([a-zA-Z])", code)
        for _ in range(1 if kind == "s" else int(count or 1))
    ]


class _Gen:
    """The module being generated: its constants, helper functions and builders."""

    def __init__(self) -> None:
        self.module = ir.Module(name="dprobes_logformat")
        self.memcpy = self.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
        self.memset = self.module.declare_intrinsic("llvm.memset", [PTR, I64])
        self.ctlz = ir.Function(self.module, ir.FunctionType(I32, [I32, I1]), "llvm.ctlz.i32")
        self._constants: dict[bytes, ir.GlobalVariable] = {}
        self.pairs = self.constant(b"".join(b"%02x" % n for n in range(256)))
        self.decimal_pairs = self.constant(b"".join(b"%02d" % n for n in range(100)))
        self.digits = self.constant(b"0123456789abcdef")
        self._hex: dict[Hex, ir.Function] = {}
        self._dumps: dict[Dump, ir.Function] = {}

    # --- small pieces -------------------------------------------------------------------

    def constant(self, data: bytes) -> ir.GlobalVariable:
        known = self._constants.get(data)
        if known is None:
            kind = ir.ArrayType(I8, len(data))
            known = ir.GlobalVariable(self.module, kind, f"text{len(self._constants)}")
            known.initializer = ir.Constant(kind, bytearray(data))
            known.global_constant, known.linkage = True, "internal"
            known.type = PTR  # an opaque pointer, like every other pointer here
            self._constants[data] = known
        return known

    def function(self, name: str, result: ir.Type, args: list[ir.Type]) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(result, args), name)
        fn.linkage = "internal"
        return fn

    @staticmethod
    def alloca(b: ir.IRBuilder, kind: ir.Type) -> ir.Value:
        """A stack slot, as an opaque pointer like every other pointer here."""
        slot = b.alloca(kind)
        slot.type = PTR
        return slot

    @staticmethod
    def at(b: ir.IRBuilder, pointer: ir.Value, offset: ir.Value | int) -> ir.Value:
        if isinstance(offset, int):
            offset = ir.Constant(I64, offset)
        elif offset.type != I64:
            offset = b.zext(offset, I64)
        return b.gep(pointer, [offset], source_etype=I8)

    def put(self, b: ir.IRBuilder, out: ir.Value, data: bytes) -> ir.Value:
        """Copy literal bytes; the pointer after them."""
        if not data:
            return out
        b.call(
            self.memcpy, [out, self.constant(data), ir.Constant(I64, len(data)), ir.Constant(I1, 0)]
        )
        return self.at(b, out, len(data))

    def copy(self, b: ir.IRBuilder, out: ir.Value, source: ir.Value, length: ir.Value):
        b.call(self.memcpy, [out, source, b.zext(length, I64), ir.Constant(I1, 0)])
        return self.at(b, out, length)

    def store(self, b: ir.IRBuilder, out: ir.Value, value: ir.Value, size: int) -> ir.Value:
        """Store an integer in ``size`` little-endian bytes; the pointer after them."""
        kind = INTS[size]
        if value.type.width > kind.width:
            value = b.trunc(value, kind)
        elif value.type.width < kind.width:
            value = b.zext(value, kind)
        b.store(value, out, align=1)
        return self.at(b, out, size)

    def pair(
        self, b: ir.IRBuilder, out: ir.Value, number: ir.Value, table: ir.Value | None = None
    ) -> None:
        """The two characters for ``number`` in a table of pairs (by default the hex
        digits of a byte) at ``out``."""
        index = b.shl(b.zext(number, I64), ir.Constant(I64, 1))
        b.store(b.load(self.at(b, table or self.pairs, index), typ=I16, align=1), out, align=1)

    @staticmethod
    def loop(
        b: ir.IRBuilder,
        name: str,
        start: ir.Value,
        count: ir.Value,
        body: Callable[[ir.IRBuilder, ir.Value], None],
    ) -> None:
        """``for i in range(start, count): body(i)`` on i32 counters."""
        head = b.append_basic_block(f"{name}_head")
        inside = b.append_basic_block(f"{name}_body")
        done = b.append_basic_block(f"{name}_done")
        before = b.block
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I32)
        i.add_incoming(start, before)
        b.cbranch(b.icmp_unsigned("<", i, count), inside, done)
        b.position_at_end(inside)
        body(b, i)
        i.add_incoming(b.add(i, ir.Constant(I32, 1)), b.block)
        b.branch(head)
        b.position_at_end(done)

    def when(
        self,
        b: ir.IRBuilder,
        condition: ir.Value,
        out: ir.Value,
        then: Callable[[ir.IRBuilder, ir.Value], ir.Value],
    ) -> ir.Value:
        """``then(out)`` if ``condition``: the output pointer after either way."""
        before = b.block
        with b.if_then(condition):
            after = then(b, out)
            inside = b.block
        merged = b.phi(PTR)
        merged.add_incoming(out, before)
        merged.add_incoming(after, inside)
        return merged

    # --- numbers ------------------------------------------------------------------------

    @functools.cached_property
    def put_dec(self) -> ir.Function:
        """put_dec(out, value): ``value`` in decimal; the pointer after it. The digit count
        comes from comparisons, the digits two at a time from a table."""
        fn = self.function("put_dec", PTR, [PTR, I32])
        out, value = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        count = ir.Constant(I32, 1)
        for power in range(1, 10):
            count = b.add(
                count, b.zext(b.icmp_unsigned(">=", value, ir.Constant(I32, 10**power)), I32)
            )
        end = self.at(b, out, count)
        pairs = b.append_basic_block("pairs")
        last = b.append_basic_block("last")
        entry = b.block
        b.branch(pairs)
        b.position_at_end(pairs)
        where, left = b.phi(PTR), b.phi(I32)
        where.add_incoming(end, entry)
        left.add_incoming(value, entry)
        more = b.append_basic_block("more")
        b.cbranch(b.icmp_unsigned(">=", left, ir.Constant(I32, 100)), more, last)
        b.position_at_end(more)
        here = self.at(b, where, ir.Constant(I64, -2))
        self.pair(b, here, b.urem(left, ir.Constant(I32, 100)), self.decimal_pairs)
        where.add_incoming(here, more)
        left.add_incoming(b.udiv(left, ir.Constant(I32, 100)), more)
        b.branch(pairs)
        b.position_at_end(last)
        two = b.icmp_unsigned(">=", left, ir.Constant(I32, 10))
        with b.if_else(two) as (then, otherwise):
            with then:
                self.pair(b, self.at(b, where, ir.Constant(I64, -2)), left, self.decimal_pairs)
            with otherwise:
                b.store(
                    b.trunc(b.add(left, ir.Constant(I32, 0x30)), I8),
                    self.at(b, where, ir.Constant(I64, -1)),
                )
        b.ret(end)
        return fn

    @functools.cached_property
    def put_fixed(self) -> dict[int, ir.Function]:
        """put_fixed<base>(out, value, digits): exactly ``digits`` digits, zero-padded, in
        base 10 and 16."""
        return {base: self._put_fixed(base) for base in (10, 16)}

    def _put_fixed(self, base: int) -> ir.Function:
        fn = self.function(f"put_fixed{base}", PTR, [PTR, I32, I32])
        out, value, digits = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        left, where = self.alloca(b, I32), self.alloca(b, PTR)
        b.store(value, left)
        end = self.at(b, out, digits)
        b.store(end, where)
        table = self.decimal_pairs if base == 10 else self.pairs
        square, radix = ir.Constant(I32, base * base), ir.Constant(I32, base)

        def two(b: ir.IRBuilder, i: ir.Value) -> None:  # two digits a step, from the end
            now = b.load(left, typ=I32)
            here = self.at(b, b.load(where, typ=PTR), ir.Constant(I64, -2))
            self.pair(b, here, b.urem(now, square), table)
            b.store(b.udiv(now, square), left)
            b.store(here, where)

        self.loop(b, "pair", ir.Constant(I32, 0), b.lshr(digits, ir.Constant(I32, 1)), two)
        with b.if_then(b.trunc(digits, I1)):
            char = b.load(self.at(b, self.digits, b.urem(b.load(left, typ=I32), radix)), typ=I8)
            b.store(char, out)
        b.ret(end)
        return fn

    @functools.cached_property
    def put_hex(self) -> ir.Function:
        """put_hex(out, value): the hex digits without padding (as ``%x``)."""
        fn = self.function("put_hex", PTR, [PTR, I32])
        out, value = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        bits = b.sub(ir.Constant(I32, 32), b.call(self.ctlz, [value, ir.Constant(I1, 0)]))
        digits = b.udiv(b.add(bits, ir.Constant(I32, 3)), ir.Constant(I32, 4))
        digits = b.select(
            b.icmp_unsigned("==", digits, ir.Constant(I32, 0)), ir.Constant(I32, 1), digits
        )
        b.ret(b.call(self.put_fixed[16], [out, value, digits]))
        return fn

    # --- data ---------------------------------------------------------------------------

    def hex_bytes(self, piece: Hex) -> ir.Function:
        """put_hex_bytes(out, data, length): the bytes as ``layouts.Hex`` says, each from a
        table of what the Python formatter's ``hex_bytes`` writes for every byte value
        (in slots of ``HEX_SLOT`` bytes, with a table of lengths)."""
        known = self._hex.get(piece)
        if known is not None:
            return known
        fn = self._hex[piece] = self.function(f"put_hex{len(self._hex)}", PTR, [PTR, PTR, I32])
        out, data, length = fn.args
        texts = [hex_bytes(piece, bytes([value])) for value in range(256)]
        if max(map(len, texts)) > HEX_SLOT:
            raise ValueError(f"{piece}: a byte's text is longer than {HEX_SLOT} bytes")
        slots = self.constant(b"".join(text.ljust(HEX_SLOT, b"\0") for text in texts))
        lengths = self.constant(bytes(len(text) for text in texts))
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        cursor = self.alloca(b, PTR)
        b.store(out, cursor)

        def body(b: ir.IRBuilder, i: ir.Value) -> None:
            byte = b.zext(b.load(self.at(b, data, i), typ=I8), I64)
            slot = self.at(b, slots, b.mul(byte, ir.Constant(I64, HEX_SLOT)))
            p = b.load(cursor, typ=PTR)
            b.store(b.load(slot, typ=INTS[HEX_SLOT], align=1), p, align=1)
            b.store(self.at(b, p, b.load(self.at(b, lengths, byte), typ=I8)), cursor)

        self.loop(b, "byte", ir.Constant(I32, 0), length, body)
        b.ret(b.load(cursor, typ=PTR))
        return fn

    def dump(self, piece: Dump) -> ir.Function:
        """put_dump(out, data, length): rows as ``layouts.Dump`` says."""
        known = self._dumps.get(piece)
        if known is not None:
            return known
        fn = self._dumps[piece] = self.function(f"put_dump{len(self._dumps)}", PTR, [PTR, PTR, I32])
        out, data, length = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        cursor = self.alloca(b, PTR)
        b.store(out, cursor)
        width, group = ir.Constant(I32, piece.width), ir.Constant(I32, piece.group)
        hex_chars = piece.row_chars()
        rows = b.udiv(b.add(length, ir.Constant(I32, piece.width - 1)), width)

        def row(b: ir.IRBuilder, index: ir.Value) -> None:
            start = b.mul(index, width)
            left = b.sub(length, start)
            n = b.select(b.icmp_unsigned("<", left, width), left, width)
            row_data = self.at(b, data, start)
            p = self.put(b, b.load(cursor, typ=PTR), b"0x")
            p = self.put(b, b.call(self.put_fixed[16], [p, start, ir.Constant(I32, 8)]), b" : ")
            b.call(
                self.memset,
                [p, ir.Constant(I8, 0x20), ir.Constant(I64, hex_chars), ir.Constant(I1, 0)],
            )

            def pair(b: ir.IRBuilder, j: ir.Value) -> None:
                where = b.add(b.mul(j, ir.Constant(I32, 2)), b.udiv(j, group))
                self.pair(b, self.at(b, p, where), b.load(self.at(b, row_data, j), typ=I8))

            self.loop(b, "pair", ir.Constant(I32, 0), n, pair)
            text = self.put(b, self.at(b, p, hex_chars), b": ")

            def char(b: ir.IRBuilder, j: ir.Value) -> None:
                c = b.and_(b.load(self.at(b, row_data, j), typ=I8), ir.Constant(I8, ASCII_MASK))
                shown = b.icmp_unsigned(
                    "<",
                    b.sub(c, ir.Constant(I8, PRINTABLE.start)),
                    ir.Constant(I8, len(PRINTABLE)),
                )
                b.store(b.select(shown, c, ir.Constant(I8, 0x2E)), self.at(b, text, j))

            self.loop(b, "char", ir.Constant(I32, 0), n, char)
            b.store(self.put(b, self.at(b, text, n), b"\n"), cursor)

        self.loop(b, "row", ir.Constant(I32, 0), rows, row)
        b.ret(b.load(cursor, typ=PTR))
        return fn

    # --- records ------------------------------------------------------------------------

    def layout(self, number: int, pieces: Pieces) -> ir.Function:
        """format<n>(out, record): what the pieces write for one record."""
        fn = self.function(f"format{number}", PTR, [PTR, PTR])
        out, record = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))

        def member(index: int, *more: int) -> ir.Value:
            indices = [ir.Constant(I32, i) for i in (0, index, *more)]
            return b.gep(record, indices, source_etype=RECORD)

        def load(index: int, *more: int) -> ir.Value:
            kind = RECORD.elements[index]
            return b.load(member(index, *more), typ=kind.element if more else kind)

        info = load(R_INFO)
        fields = load(R_FIELDS)
        length = load(R_LEN)
        data = load(R_DATA)

        def number(attr: str) -> ir.Value:
            return load(R_VALUES, NUMERIC_VALUES.index(attr))

        def text(b: ir.IRBuilder, p: ir.Value, form: Style | None) -> ir.Value:
            def element(member: str, kind: ir.Type) -> ir.Value:
                index = [
                    ir.Constant(I32, 0),
                    ir.Constant(I32, field_index(IdentInfo, member)),
                    ir.Constant(I32, TEXT_FORMS.index(form)),
                ]
                return b.load(b.gep(info, index, source_etype=ir_struct(IdentInfo)), typ=kind)

            source, size = element("text", PTR), element("text_len", I32)
            return self.copy(b, p, source, size)

        def selected(flag: LogField) -> ir.Value:
            return b.icmp_unsigned(
                "!=", b.and_(fields, ir.Constant(I32, int(flag))), ir.Constant(I32, 0)
            )

        def shown(p: ir.Value, value: HeaderValue, style: Style) -> ir.Value:
            if style in (Style.TEXT, Style.JSON_TEXT):
                return text(b, p, style)
            if style is Style.DEC:
                return b.call(self.put_dec, [p, number(value.hit[0])])
            if style is Style.HEX:
                return b.call(self.put_hex, [p, number(value.hit[0])])
            eight = ir.Constant(I32, 8)
            if style is Style.HEX8:
                return b.call(self.put_fixed[16], [p, number(value.hit[0]), eight])
            seconds, microseconds = (number(attr) for attr in value.hit)
            if style is Style.HEX_TIME:
                p = self.put(b, b.call(self.put_fixed[16], [p, seconds, eight]), b":")
                return b.call(self.put_fixed[16], [p, microseconds, eight])
            quote = b'"' if style is Style.JSON_TIME else b""
            p = b.call(self.put_dec, [self.put(b, p, quote), seconds])
            p = b.call(
                self.put_fixed[10],
                [
                    self.put(b, p, b":"),
                    microseconds,
                    ir.Constant(I32, len(str(MICROSECONDS_PER_SECOND - 1))),
                ],
            )
            return self.put(b, p, quote)

        def header(p: ir.Value, smp: bool) -> ir.Value:
            cpu_size = struct.calcsize("<" + CPU_CODE) if smp else 0
            size = ir.Constant(I32, BASE.size + cpu_size)
            bits = ir.Constant(I32, BASE_BITS | (HeaderBit.CPU if smp else 0))
            for field in HEADER:
                on = selected(field.flag)
                extra = sum(struct.calcsize("<" + value.code) for value in field.values)
                size = b.add(size, b.select(on, ir.Constant(I32, extra), ir.Constant(I32, 0)))
                bits = b.or_(bits, b.select(on, ir.Constant(I32, field.bits), ir.Constant(I32, 0)))
            base = (
                ir.Constant(I32, FACILITY_ID),
                size,
                bits,
                load(R_MAJOR),
                load(R_MINOR),
            )
            for code, value in zip(part_codes(BASE.format[1:]), base, strict=True):
                p = self.store(b, p, value, struct.calcsize("<" + code))
            if smp:
                p = self.store(b, p, ir.Constant(I32, CPU), cpu_size)
            for field in HEADER:

                def parts(b: ir.IRBuilder, p: ir.Value, field=field) -> ir.Value:
                    for value in field.values:
                        codes = part_codes(value.code)
                        if value.shown is Shown.TEXT:
                            p = text(b, p, None)
                            continue
                        for code, attr in zip(codes, value.hit, strict=True):
                            p = self.store(b, p, number(attr), struct.calcsize("<" + code))
                    return p

                p = self.when(b, selected(field.flag), p, parts)
            return p

        p = out
        for piece in pieces:
            if isinstance(piece, Text):
                p = self.put(b, p, piece.value)
            elif isinstance(piece, Number):
                p = b.call(self.put_dec, [p, load(R_MAJOR if piece.name == "major" else R_MINOR)])
            elif isinstance(piece, Fields):
                for field in HEADER:

                    def values(b: ir.IRBuilder, p: ir.Value, field=field, piece=piece) -> ir.Value:
                        for value in field.values:
                            p = self.put(b, p, piece.before + value.name.encode() + piece.between)
                            p = shown(p, value, piece.styles[value.shown])
                            p = self.put(b, p, piece.after)
                        return p

                    p = self.when(b, selected(field.flag), p, values)
            elif isinstance(piece, Binary):
                p = header(p, piece.smp)
            elif isinstance(piece, Raw):
                p = self.copy(b, p, data, length)
            elif isinstance(piece, Hex):
                p = b.call(self.hex_bytes(piece), [p, data, length])
            elif isinstance(piece, Dump):
                p = b.call(self.dump(piece), [p, data, length])
        b.ret(p)
        return fn

    def dispatch(self, layouts: tuple[Layout, ...]) -> ir.Function:
        """format_one(out, record, which): for the layout numbered ``n`` in ``layouts``,
        its record's pieces if ``which`` is ``2n``, its exception log's if ``2n + 1`` (any
        other number writes nothing)."""
        formats = [
            self.layout(2 * number + kind, pieces)
            for number, layout in enumerate(layouts)
            for kind, pieces in enumerate((layout.record, layout.exception))
        ]
        fn = self.function("format_one", PTR, [PTR, PTR, I32])
        out, record, which = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        bad = fn.append_basic_block("bad")
        switch = b.switch(which, bad)
        for number, function in enumerate(formats):
            block = fn.append_basic_block(f"layout{number}")
            switch.add_case(ir.Constant(I32, number), block)
            b.position_at_end(block)
            b.ret(b.call(function, [out, record]))
        b.position_at_end(bad)
        b.ret(out)
        return fn


def _walk(gen: _Gen, name: str, format_one: ir.Function | None) -> ir.Function:
    """``name(job)``: walk the job's records; with ``format_one``, format each into the
    output buffer while it has room; without, only count them."""
    fn = ir.Function(gen.module, ir.FunctionType(ir.VoidType(), [PTR]), name)
    (job,) = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    job_type = ir_struct(FormatJob)

    def slot(member: str) -> ir.Value:
        return b.gep(
            job,
            [ir.Constant(I32, 0), ir.Constant(I32, field_index(FormatJob, member))],
            source_etype=job_type,
        )

    def get(member: str) -> ir.Value:
        return b.load(slot(member), typ=job_type.elements[field_index(FormatJob, member)])

    chunk, end, idents, out = (get(m) for m in ("chunk", "end", "idents", "out"))
    out_size = get("out_size")
    record = gen.alloca(b, RECORD)
    head_block = b.append_basic_block("head")
    body = b.append_basic_block("record")
    done = b.append_basic_block("done")
    entry = b.block
    at0, out_at0, records0 = (get(m) for m in ("at", "out_at", "records"))
    b.branch(head_block)
    b.position_at_end(head_block)
    at, out_at, records = b.phi(I64), b.phi(I64), b.phi(I64)
    for phi, first in ((at, at0), (out_at, out_at0), (records, records0)):
        phi.add_incoming(first, entry)
    b.cbranch(b.icmp_unsigned("<", at, end), body, done)
    b.position_at_end(body)
    head = gen.at(b, chunk, at)

    def head_field(member: str) -> ir.Value:
        spec = getattr(ring.RecordHead, member)
        return (
            b.zext(b.load(gen.at(b, head, spec.offset), typ=INTS[spec.size]), I64)
            if spec.size < 8
            else b.load(gen.at(b, head, spec.offset), typ=I64)
        )

    ident, log_len, ex_len = (head_field(m) for m in ("ident", "log_len", "ex_len"))
    info_type = ir_struct(IdentInfo)
    info = b.gep(idents, [ident], source_etype=info_type)

    def info_field(member: str) -> ir.Value:
        index = field_index(IdentInfo, member)
        return b.load(
            b.gep(info, [ir.Constant(I32, 0), ir.Constant(I32, index)], source_etype=info_type),
            typ=info_type.elements[index],
        )

    fields = info_field("fields")
    q = gen.at(b, head, ctypes.sizeof(ring.RecordHead))
    values: dict[str, ir.Value] = {attr: ir.Constant(I32, 0) for attr in NUMERIC_VALUES}
    for attr in IDENT_VALUES:
        values[attr] = info_field(attr)
    carried = {
        value.ring[0]: value for field in HEADER for value in field.values if value.ring is not None
    }
    for flag, names, codes in ring.HEADER_FIELDS:
        on = b.icmp_unsigned("!=", b.and_(fields, ir.Constant(I32, int(flag))), ir.Constant(I32, 0))
        before, got = b.block, {}
        with b.if_then(on):
            step = 0
            for name, code in zip(names, codes, strict=True):
                size = struct.calcsize("<" + code)
                raw = b.load(gen.at(b, q, step), typ=INTS[size])
                step += size
                value = carried[name]
                if value.shown is Shown.TIME:  # the ring holds the instruction clock
                    ns = b.add(
                        ir.Constant(I64, clock.EPOCH * NS_PER_SECOND),
                        b.mul(b.zext(raw, I64), ir.Constant(I64, clock.NS_PER_INSTRUCTION)),
                    )
                    parts = (
                        b.udiv(ns, ir.Constant(I64, NS_PER_SECOND)),
                        b.urem(
                            b.udiv(ns, ir.Constant(I64, NS_PER_MICROSECOND)),
                            ir.Constant(I64, MICROSECONDS_PER_SECOND),
                        ),
                    )
                else:
                    parts = (raw,)
                for attr, part in zip(value.hit, parts, strict=True):
                    got[attr] = b.trunc(part, I32) if part.type.width > 32 else part
            after = gen.at(b, q, step)
            inside = b.block
        for attr, part in got.items():
            values[attr] = b.phi(I32)
            values[attr].add_incoming(ir.Constant(I32, 0), before)
            values[attr].add_incoming(part, inside)
        moved = b.phi(PTR)
        moved.add_incoming(q, before)
        moved.add_incoming(after, inside)
        q = moved
    data = q
    used = b.add(b.sub(b.ptrtoint(q, I64), b.ptrtoint(chunk, I64)), b.add(log_len, ex_len))
    next_at = b.and_(b.add(used, ir.Constant(I64, 3)), ir.Constant(I64, ~3))
    next_records = b.add(records, ir.Constant(I64, 1))
    if format_one is None:
        at.add_incoming(next_at, b.block)
        out_at.add_incoming(out_at, b.block)
        records.add_incoming(next_records, b.block)
        b.branch(head_block)
    else:
        need = b.add(
            b.zext(info_field("room"), I64),
            b.mul(b.add(log_len, ex_len), ir.Constant(I64, ROOM_PER_DATA_BYTE)),
        )
        room = b.icmp_unsigned("<=", b.add(out_at, need), out_size)
        fits = b.append_basic_block("fits")
        b.cbranch(room, fits, done)
        full = b.block
        b.position_at_end(fits)

        def put(index: int, value: ir.Value) -> None:
            b.store(
                value,
                b.gep(record, [ir.Constant(I32, 0), ir.Constant(I32, index)], source_etype=RECORD),
            )

        for i, attr in enumerate(NUMERIC_VALUES):
            b.store(
                values[attr],
                b.gep(
                    record,
                    [ir.Constant(I32, 0), ir.Constant(I32, R_VALUES), ir.Constant(I32, i)],
                    source_etype=RECORD,
                ),
            )
        layout = info_field("layout")
        put(R_INFO, info)
        put(R_FIELDS, fields)
        put(R_MAJOR, b.trunc(head_field("major"), I32))
        put(R_MINOR, b.trunc(head_field("minor"), I32))
        put(R_LEN, b.trunc(log_len, I32))
        put(R_DATA, data)
        which = b.mul(layout, ir.Constant(I32, 2))
        p = b.call(format_one, [gen.at(b, out, out_at), record, which])
        with b.if_then(b.icmp_unsigned("!=", ex_len, ir.Constant(I64, 0))):
            for index in (R_MAJOR, R_MINOR, R_FIELDS):
                put(index, ir.Constant(I32, 0))
            put(R_LEN, b.trunc(ex_len, I32))
            put(R_DATA, gen.at(b, data, log_len))
            second = b.call(format_one, [p, record, b.add(which, ir.Constant(I32, 1))])
            inside = b.block
        p_all = b.phi(PTR)
        p_all.add_incoming(p, fits)
        p_all.add_incoming(second, inside)
        written = b.sub(b.ptrtoint(p_all, I64), b.ptrtoint(out, I64))
        at.add_incoming(next_at, b.block)
        out_at.add_incoming(written, b.block)
        records.add_incoming(next_records, b.block)
        b.branch(head_block)
        b.position_at_end(done)
        final_at, final_out, final_records = b.phi(I64), b.phi(I64), b.phi(I64)
        for phi, value in ((final_at, at), (final_out, out_at), (final_records, records)):
            phi.add_incoming(value, head_block)
            phi.add_incoming(value, full)
        for member, value in (("at", final_at), ("out_at", final_out), ("records", final_records)):
            b.store(value, slot(member))
        b.ret_void()
        return fn
    b.position_at_end(done)
    for member, value in (("at", at), ("records", records)):
        b.store(value, slot(member))
    b.ret_void()
    return fn


JOB_FUNCTION = ctypes.CFUNCTYPE(None, ctypes.POINTER(FormatJob))


def build_module(symbol: str, layouts: tuple[Layout, ...] | None) -> ir.Module:
    """A module defining ``symbol(job)``: the walk formatting ``layouts``, or (None) only
    counting. Only the code a run needs is compiled: compiling costs more than formatting."""
    gen = _Gen()
    _walk(gen, symbol, None if layouts is None else gen.dispatch(layouts))
    return gen.module


_modules = itertools.count()


@functools.cache
def function(layouts: tuple[Layout, ...] | None) -> Callable:
    """The compiled walk over ring chunks, formatting ``layouts`` or (None) counting;
    each choice is compiled once per process."""
    from dprobes.vm.jit.compile import Engine

    symbol = f"dprobes_log_{'count' if layouts is None else 'format'}_{next(_modules)}"
    addresses = Engine.get().add_library(build_module(symbol, layouts), [symbol])
    return JOB_FUNCTION(addresses[symbol])


OUT_BYTES = 4 << 20
"""The output buffer: formatted bytes are written when it is (nearly) full. It holds the
largest record (``ROOM_PER_DATA_BYTE`` x two 64 KiB logs, plus the texts)."""


class NativeFormatter:
    """Formats (or counts) chunks of the native ring with the generated code, for one set
    of probes (``set_probe``; idents are dense small numbers)."""

    def __init__(self, layouts: tuple[Layout, ...]) -> None:
        self.layouts = layouts
        """The layouts it writes (a probe with another layout's records count, but
        write nothing)."""
        self._table = (IdentInfo * 16)()
        self._outgrown: list[ctypes.Array] = []  # tables a job under way may still read
        self._keep: list[bytes] = []  # the texts the table points into
        self._out = ctypes.create_string_buffer(OUT_BYTES)
        self._view = memoryview(self._out).cast("B")
        self._job = FormatJob()
        self._job.out, self._job.out_size = ctypes.addressof(self._out), OUT_BYTES
        self._count_job = FormatJob()  # counting may run beside a format in another thread

    def __len__(self) -> int:
        """Probes known."""
        return len(self._keep) // len(TEXT_FORMS)

    def set_probe(self, ident: int, probe: ProbeLog) -> None:
        """Tell the formatter about the probe with this ident (the next one)."""
        assert ident == len(self)
        if ident >= len(self._table):
            bigger = (IdentInfo * (2 * len(self._table)))()
            ctypes.memmove(bigger, self._table, ctypes.sizeof(self._table))
            self._outgrown.append(self._table)
            self._table = bigger
        info = self._table[ident]
        for attr in IDENT_VALUES:
            setattr(info, attr, getattr(probe, attr) & 0xFFFFFFFF)
        info.fields = int(probe.fields)
        info.layout = (
            self.layouts.index(probe.layout) if probe.layout in self.layouts else len(self.layouts)
        )
        room = EXTRA_ROOM
        for i, form in enumerate(TEXT_FORMS):
            encoded = (
                text_bytes(form, probe.name)
                if form is not None
                else struct.pack("<16s", probe.name.encode())
            )
            self._keep.append(encoded)
            info.text_len[i] = len(encoded)
            info.text[i] = ctypes.cast(ctypes.c_char_p(encoded), c_void_p).value
            room += len(encoded)
        info.room = room

    def _start(self, job: FormatJob, address: int, length: int) -> None:
        job.chunk, job.at, job.end, job.records = address, 0, length, 0
        job.idents = ctypes.addressof(self._table)

    def compile(self) -> None:
        """Compile the walk now (in this thread), not at the first ``format``."""
        function(self.layouts)

    def format(self, address: int, length: int, write: Callable[[memoryview], object]) -> int:
        """Format the records of the chunk at ``address`` (``length`` bytes), handing the
        output to ``write`` in large pieces; the number of records."""
        job = self._job
        self._start(job, address, length)
        while job.at < length:
            job.out_at, before = 0, job.at
            function(self.layouts)(job)
            if job.at == before:  # OUT_BYTES holds the largest record: never happens
                raise RuntimeError("a log record larger than the output buffer")
            write(self._view[: job.out_at])
        return job.records

    def count(self, address: int, length: int) -> int:
        """The number of records in the chunk at ``address`` (``length`` bytes)."""
        job = self._count_job
        self._start(job, address, length)
        function(None)(job)
        return job.records
