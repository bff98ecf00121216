"""The GGUF type tables everything else names types by: ggml tensor types (id, name, block
size in elements and bytes) and llama.cpp's file types (``llama_ftype``, as llama-quantize
spells them). A leaf: it imports nothing of the project, so settings, file checks and
quantization share one table without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass

# ggml type -> (elements per block, bytes per block), as ggml defines them
QK_K = 256
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17), 40: (64, 36), 41: (128, 18), 42: (64, 18),
}  # fmt: skip

# ggml type id -> its name as llama-quantize prints it
GGML_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0", 42: "Q2_0",
}  # fmt: skip
TYPE_IDS = {name: i for i, name in GGML_TYPE_NAMES.items()}


@dataclass(frozen=True)
class FileType:
    name: str
    ftype: int  # llama.cpp's enum llama_ftype
    needs_imatrix: bool = False


# Names as llama-quantize spells them. Types that llama.cpp refuses to build without an
# importance matrix are marked so the error comes before any work is done.
FILE_TYPES: dict[str, FileType] = {
    t.name: t
    for t in (
        FileType("F32", 0),
        FileType("F16", 1),
        FileType("BF16", 32),
        FileType("Q8_0", 7),
        FileType("Q6_K", 18),
        FileType("Q5_K_M", 17),
        FileType("Q5_K_S", 16),
        FileType("Q5_1", 9),
        FileType("Q5_0", 8),
        FileType("Q4_K_M", 15),
        FileType("Q4_K_S", 14),
        FileType("Q4_1", 3),
        FileType("Q4_0", 2),
        FileType("IQ4_NL", 25),
        FileType("IQ4_XS", 30),
        FileType("Q3_K_L", 13),
        FileType("Q3_K_M", 12),
        FileType("Q3_K_S", 11),
        FileType("IQ3_M", 27),
        FileType("IQ3_S", 26),
        FileType("IQ3_XS", 22, needs_imatrix=True),
        FileType("IQ3_XXS", 23, needs_imatrix=True),
        FileType("Q2_K", 10),
        FileType("Q2_K_S", 21, needs_imatrix=True),
        FileType("IQ2_M", 29, needs_imatrix=True),
        FileType("IQ2_S", 28, needs_imatrix=True),
        FileType("IQ2_XS", 20, needs_imatrix=True),
        FileType("IQ2_XXS", 19, needs_imatrix=True),
        FileType("IQ1_M", 31, needs_imatrix=True),
        FileType("IQ1_S", 24, needs_imatrix=True),
        FileType("TQ2_0", 37),
        FileType("TQ1_0", 36),
    )
}


def file_type_name(ftype: int | None) -> str | None:
    """llama-quantize's name of a ``general.file_type`` value (None: unknown)."""
    if ftype is None:
        return None
    return next((t.name for t in FILE_TYPES.values() if t.ftype == ftype & ~1024), None)
