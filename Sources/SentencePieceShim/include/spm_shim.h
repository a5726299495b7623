/*
 * spm_shim.h: a small C API over libsentencepiece (SentencePieceProcessor).
 *
 * Swift calls libsentencepiece through this header so that no Swift target needs C++ interoperability.
 * Every function catches C++ exceptions and reports them as an error code; none of them throws or aborts.
 * A processor is not safe to load concurrently with other calls; once loaded, the const calls
 * (encode, decode, queries) may run from several threads at once, as SentencePieceProcessor's are const.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Opaque handle owning one sentencepiece::SentencePieceProcessor. */
typedef struct spm_processor spm_processor;

/** Piece types, numbered as in sentencepiece_model.proto (ModelProto.SentencePiece.Type). */
enum {
    SPM_PIECE_NORMAL = 1,
    SPM_PIECE_UNKNOWN = 2,
    SPM_PIECE_CONTROL = 3,
    SPM_PIECE_USER_DEFINED = 4,
    SPM_PIECE_UNUSED = 5,
    SPM_PIECE_BYTE = 6,
};

/** Allocates an empty processor; returns NULL when out of memory. Free it with spm_free. */
spm_processor *spm_new(void);

/** Frees a processor made by spm_new; NULL is allowed. */
void spm_free(spm_processor *p);

/**
 * Loads a serialized sentencepiece ModelProto (`len` bytes at `data`).
 * Returns 0 on success, otherwise a non-zero status code (sentencepiece util::StatusCode, or -1 for an exception)
 * and writes a NUL-terminated message of at most `errlen` bytes into `err` (when `err` is not NULL).
 */
int spm_load_serialized(spm_processor *p, const void *data, size_t len, char *err, size_t errlen);

/**
 * Encodes `len` bytes of UTF-8 text into piece ids.
 * Returns the number of ids the text encodes to and copies min(count, cap) of them into `ids`;
 * returns -1 on error (processor not loaded, internal failure). A count never exceeds `len` (+1 for a dummy prefix),
 * so cap = len + 8 always suffices.
 */
long spm_encode(const spm_processor *p, const char *text, size_t len, int32_t *ids, size_t cap);

/**
 * Decodes `n` ids into UTF-8 with sentencepiece's own rules (control pieces render as nothing).
 * Returns the full byte length and copies min(length, cap) bytes into `out` (not NUL-terminated); -1 on error,
 * including an id outside [0, piece size).
 */
long spm_decode(const spm_processor *p, const int32_t *ids, size_t n, char *out, size_t cap);

/** Number of pieces in the loaded model, or 0 when none is loaded. */
int spm_piece_size(const spm_processor *p);

/** Special ids of the loaded model (-1 when undefined or not loaded). */
int spm_bos_id(const spm_processor *p);
int spm_eos_id(const spm_processor *p);
int spm_unk_id(const spm_processor *p);
int spm_pad_id(const spm_processor *p);

/**
 * Copies the piece text of `id` (as stored in the model, whitespace escaped as U+2581) into `out`.
 * Returns its full byte length (copying min(length, cap) bytes), or -1 when `id` is out of range.
 */
long spm_id_to_piece(const spm_processor *p, int id, char *out, size_t cap);

/** The id of a piece given by `len` bytes of text, or the unknown id when it is not in the model; -1 on error. */
int spm_piece_to_id(const spm_processor *p, const char *piece, size_t len);

/** The SPM_PIECE_* type of `id`, or 0 when `id` is out of range or no model is loaded. */
int spm_piece_type(const spm_processor *p, int id);

#ifdef __cplusplus
}
#endif
