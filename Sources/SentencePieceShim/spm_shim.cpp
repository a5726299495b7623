// spm_shim.cpp: extern "C" wrappers over sentencepiece::SentencePieceProcessor (libsentencepiece 0.1.x).
// Exceptions never cross the C boundary: each entry point catches everything and returns an error value.
#include "spm_shim.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <string>
#include <string_view>
#include <vector>

struct spm_processor {
    sentencepiece::SentencePieceProcessor sp;
    bool loaded = false;
};

namespace {

void copy_message(const std::string &message, char *err, size_t errlen) {
    if (err == nullptr || errlen == 0) return;
    const size_t n = std::min(message.size(), errlen - 1);
    std::memcpy(err, message.data(), n);
    err[n] = 0;
}

bool valid_id(const spm_processor *p, int id) {
    return p != nullptr && p->loaded && id >= 0 && id < p->sp.GetPieceSize();
}

}  // namespace

extern "C" spm_processor *spm_new(void) {
    try {
        return new (std::nothrow) spm_processor();
    } catch (...) {
        return nullptr;
    }
}

extern "C" void spm_free(spm_processor *p) { delete p; }

extern "C" int spm_load_serialized(spm_processor *p, const void *data, size_t len, char *err, size_t errlen) {
    if (p == nullptr || (data == nullptr && len > 0)) {
        copy_message("no processor or no data", err, errlen);
        return -1;
    }
    try {
        p->loaded = false;
        const auto status = p->sp.LoadFromSerializedProto(
            std::string_view(static_cast<const char *>(data), len));
        if (status.ok()) {
            p->loaded = true;
            return 0;
        }
        copy_message(status.ToString(), err, errlen);
        const int code = static_cast<int>(status.code());
        return code != 0 ? code : -1;
    } catch (const std::exception &e) {
        copy_message(e.what(), err, errlen);
        return -1;
    } catch (...) {
        copy_message("unknown C++ exception while loading the model", err, errlen);
        return -1;
    }
}

extern "C" long spm_encode(const spm_processor *p, const char *text, size_t len, int32_t *ids, size_t cap) {
    if (p == nullptr || !p->loaded || (text == nullptr && len > 0)) return -1;
    try {
        std::vector<int> v;
        if (!p->sp.Encode(std::string_view(text == nullptr ? "" : text, len), &v).ok()) return -1;
        const size_t n = std::min(v.size(), cap);
        if (n > 0 && ids != nullptr) {
            for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(v[i]);
        }
        return static_cast<long>(v.size());
    } catch (...) {
        return -1;
    }
}

extern "C" long spm_decode(const spm_processor *p, const int32_t *ids, size_t n, char *out, size_t cap) {
    if (p == nullptr || !p->loaded || (ids == nullptr && n > 0)) return -1;
    try {
        std::vector<int> v(n);
        for (size_t i = 0; i < n; ++i) {
            if (!valid_id(p, ids[i])) return -1;
            v[i] = ids[i];
        }
        std::string text;
        if (!p->sp.Decode(v, &text).ok()) return -1;
        const size_t k = std::min(text.size(), cap);
        if (k > 0 && out != nullptr) std::memcpy(out, text.data(), k);
        return static_cast<long>(text.size());
    } catch (...) {
        return -1;
    }
}

extern "C" int spm_piece_size(const spm_processor *p) {
    if (p == nullptr || !p->loaded) return 0;
    try {
        return p->sp.GetPieceSize();
    } catch (...) {
        return 0;
    }
}

extern "C" int spm_bos_id(const spm_processor *p) { return (p && p->loaded) ? p->sp.bos_id() : -1; }
extern "C" int spm_eos_id(const spm_processor *p) { return (p && p->loaded) ? p->sp.eos_id() : -1; }
extern "C" int spm_unk_id(const spm_processor *p) { return (p && p->loaded) ? p->sp.unk_id() : -1; }
extern "C" int spm_pad_id(const spm_processor *p) { return (p && p->loaded) ? p->sp.pad_id() : -1; }

extern "C" long spm_id_to_piece(const spm_processor *p, int id, char *out, size_t cap) {
    if (!valid_id(p, id)) return -1;
    try {
        const std::string &piece = p->sp.IdToPiece(id);
        const size_t k = std::min(piece.size(), cap);
        if (k > 0 && out != nullptr) std::memcpy(out, piece.data(), k);
        return static_cast<long>(piece.size());
    } catch (...) {
        return -1;
    }
}

extern "C" int spm_piece_to_id(const spm_processor *p, const char *piece, size_t len) {
    if (p == nullptr || !p->loaded || (piece == nullptr && len > 0)) return -1;
    try {
        return p->sp.PieceToId(std::string_view(piece == nullptr ? "" : piece, len));
    } catch (...) {
        return -1;
    }
}

extern "C" int spm_piece_type(const spm_processor *p, int id) {
    if (!valid_id(p, id)) return 0;
    try {
        if (p->sp.IsUnknown(id)) return SPM_PIECE_UNKNOWN;
        if (p->sp.IsControl(id)) return SPM_PIECE_CONTROL;
        if (p->sp.IsByte(id)) return SPM_PIECE_BYTE;
        if (p->sp.IsUnused(id)) return SPM_PIECE_UNUSED;
        // libsentencepiece exposes no IsUserDefined in 0.1.x; NORMAL and USER_DEFINED are reported as NORMAL.
        return SPM_PIECE_NORMAL;
    } catch (...) {
        return 0;
    }
}
