// Per-node GPU timing of ggml's CUDA backend: see cuda-op-profile.h.

#include "cuda-op-profile.h"

#include "ggml.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace {

struct GraphTimes {
    std::vector<cudaEvent_t> pool;    // grows to the largest graph seen; reused
    std::vector<std::string> labels;  // of the nodes marked so far in this graph
};

std::mutex g_lock;
GraphTimes g_graph;
bool g_failed = false;

const char * profile_path() {
    static const char * path = [] {
        const char * p = std::getenv("BONSAI_SD_CUDA_PROFILE");
        return (p != nullptr && *p != '\0') ? p : nullptr;
    }();
    return path;
}

// What a node is, coarse enough to sum over a graph and fine enough to act on: the op, and
// for products the weight type, for copies the two types.
std::string node_label(const ggml_tensor * node) {
    std::string label = ggml_op_desc(node);
    const ggml_tensor * src0 = node->src[0];
    switch (node->op) {
        case GGML_OP_MUL_MAT:
        case GGML_OP_MUL_MAT_ID:
        case GGML_OP_GET_ROWS:
            if (src0 != nullptr) {
                label += std::string(" ") + ggml_type_name(src0->type);
            }
            break;
        case GGML_OP_CPY:
        case GGML_OP_CONT:
        case GGML_OP_DUP:
            if (src0 != nullptr && src0->type != node->type) {
                label += std::string(" ") + ggml_type_name(src0->type) + ">" + ggml_type_name(node->type);
            }
            break;
        default:
            break;
    }
    return label;
}

// The JSON string of a label (labels are ggml names: letters, digits, '_', ' ', '>').
std::string json_string(const std::string & s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
        }
        out += c;
    }
    return out + "\"";
}

// A CUDA error ends profiling for the process (with one message) rather than the generation.
bool ok(cudaError_t err, const char * what) {
    if (err == cudaSuccess) {
        return true;
    }
    std::fprintf(stderr, "bonsai-sd: CUDA profiling stopped: %s: %s\n", what, cudaGetErrorString(err));
    g_failed = true;
    return false;
}

}  // namespace

bool bonsai_cuda_profile_active() {
    return profile_path() != nullptr && !g_failed;
}

void bonsai_cuda_profile_node(cudaStream_t stream, const ggml_tensor * node) {
    std::lock_guard<std::mutex> lock(g_lock);
    if (g_failed) {
        return;
    }
    const size_t i = g_graph.labels.size();
    if (i == g_graph.pool.size()) {
        cudaEvent_t event;
        if (!ok(cudaEventCreate(&event), "cudaEventCreate")) {
            return;
        }
        g_graph.pool.push_back(event);
    }
    if (ok(cudaEventRecord(g_graph.pool[i], stream), "cudaEventRecord")) {
        g_graph.labels.push_back(node_label(node));
    }
}

void bonsai_cuda_profile_graph_end(cudaStream_t stream, const ggml_cgraph * graph) {
    std::lock_guard<std::mutex> lock(g_lock);
    std::vector<std::string> labels = std::move(g_graph.labels);
    g_graph.labels.clear();
    if (g_failed || labels.empty()) {
        return;
    }
    // One more event closes the last node.
    if (labels.size() == g_graph.pool.size()) {
        cudaEvent_t event;
        if (!ok(cudaEventCreate(&event), "cudaEventCreate")) {
            return;
        }
        g_graph.pool.push_back(event);
    }
    cudaEvent_t last = g_graph.pool[labels.size()];
    if (!ok(cudaEventRecord(last, stream), "cudaEventRecord") || !ok(cudaEventSynchronize(last), "cudaEventSynchronize")) {
        return;
    }

    std::map<std::string, std::pair<double, int>> by_label;
    double total_ms = 0.0;
    for (size_t i = 0; i < labels.size(); i++) {
        float ms = 0.0f;
        if (!ok(cudaEventElapsedTime(&ms, g_graph.pool[i], g_graph.pool[i + 1]), "cudaEventElapsedTime")) {
            return;
        }
        auto & entry = by_label[labels[i]];
        entry.first += ms;
        entry.second += 1;
        total_ms += ms;
    }

    FILE * out = std::fopen(profile_path(), "a");
    if (out == nullptr) {
        std::fprintf(stderr, "bonsai-sd: CUDA profiling stopped: cannot append to %s\n", profile_path());
        g_failed = true;
        return;
    }
    std::fprintf(out, "{\"nodes\": %d, \"gpu_ms\": %.6f, \"ops\": {", ggml_graph_n_nodes(const_cast<ggml_cgraph *>(graph)),
                 total_ms);
    const char * sep = "";
    for (const auto & [label, entry] : by_label) {
        std::fprintf(out, "%s%s: [%.6f, %d]", sep, json_string(label).c_str(), entry.first, entry.second);
        sep = ", ";
    }
    std::fprintf(out, "}}\n");
    std::fclose(out);
}
