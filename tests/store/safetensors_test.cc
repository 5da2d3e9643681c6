// The safetensors reader against files written by our writer and against corrupted bytes.
#include "moe/store/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "model/tiny_checkpoint.h"
#include "moe/store/safetensors_writer.h"

namespace moe::store {
namespace {

using ::moe::testing::TempDir;
using ::moe::testing::WriteFile;

// A file made of a raw header text (space-padded to a multiple of 8 unless `pad` is false, as
// safetensors writers do) and `data_bytes` zero bytes.
std::string RawFile(std::string header, size_t data_bytes, bool pad = true) {
  while (pad && header.size() % 8 != 0) header.push_back(' ');
  std::string out;
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += header;
  out.append(data_bytes, '\0');
  return out;
}

// Opens `bytes` as a file named `name` inside `dir`.
StatusOr<std::unique_ptr<SafetensorsFile>> OpenBytes(const TempDir& dir, const std::string& name,
                                                     const std::string& bytes) {
  const std::string path = JoinPath(dir.path(), name);
  WriteFile(path, bytes);
  return SafetensorsFile::Open(path);
}

// Expects a DATA_LOSS whose message names the file and contains every one of `parts`.
void ExpectDataLoss(const StatusOr<std::unique_ptr<SafetensorsFile>>& result,
                    const std::string& file, std::vector<std::string> parts) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss) << result.status();
  const std::string message(result.status().message());
  EXPECT_NE(message.find(file), std::string::npos) << message;
  for (const std::string& p : parts) EXPECT_NE(message.find(p), std::string::npos) << message;
}

SafetensorsWriter ThreeTensors() {
  SafetensorsWriter w;
  std::vector<uint16_t> bf16(6);
  for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = F32ToBf16(static_cast<float>(i) - 2.5f);
  std::vector<float> f32 = {1.0f, -2.0f, 3.5f};
  std::vector<uint8_t> f8 = {1, 2, 3, 4, 5};
  EXPECT_TRUE(w.Add("a.weight", DType::kBF16, {2, 3}, bf16.data(), 12).ok());
  EXPECT_TRUE(w.Add("b.bias", DType::kF32, {3}, f32.data(), 12).ok());
  EXPECT_TRUE(w.Add("c.weight", DType::kF8E4M3, {5}, f8.data(), 5).ok());
  w.SetMetadata("format", "pt");
  return w;
}

TEST(SafetensorsTest, RoundTripsWriterOutput) {
  TempDir dir;
  auto file = OpenBytes(dir, "ok.safetensors", ThreeTensors().Serialize());
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const SafetensorsEntry* a = f.Find("a.weight");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kBF16);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->nbytes(), 12);
  const auto* a_data = static_cast<const uint16_t*>(f.Data(*a));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(Bf16ToF32(a_data[i]), static_cast<float>(i) - 2.5f);
  const SafetensorsEntry* b = f.Find("b.bias");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(static_cast<const float*>(f.Data(*b))[2], 3.5f);
  const SafetensorsEntry* c = f.Find("c.weight");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->dtype, DType::kF8E4M3);
  EXPECT_EQ(static_cast<const uint8_t*>(f.Data(*c))[4], 5);
  EXPECT_EQ(f.Find("missing"), nullptr);
  // The writer pads the header so that data starts 8-byte aligned.
  EXPECT_EQ(f.header().data_offset % 8, 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.Data(*a)) % 8, 0u);
}

TEST(SafetensorsTest, AcceptsZeroSizedTensorsAndEmptyHeader) {
  TempDir dir;
  EXPECT_TRUE(OpenBytes(dir, "empty.safetensors", RawFile("{}      ", 0)).ok());
  auto f = OpenBytes(dir, "zero.safetensors",
                     RawFile(R"({"z":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},)"
                             R"("x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                             4));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->Find("z")->nbytes(), 0);
}

TEST(SafetensorsTest, RejectsTruncatedFile) {
  TempDir dir;
  std::string bytes = ThreeTensors().Serialize();
  bytes.resize(bytes.size() - 3);
  ExpectDataLoss(OpenBytes(dir, "trunc.safetensors", bytes), "trunc.safetensors",
                 {"c.weight", "run past the data section"});
}

TEST(SafetensorsTest, RejectsFileTooShortForLength) {
  TempDir dir;
  ExpectDataLoss(OpenBytes(dir, "tiny.safetensors", "abc"), "tiny.safetensors", {"too short"});
  ExpectDataLoss(OpenBytes(dir, "nothing.safetensors", ""), "nothing.safetensors", {"too short"});
}

TEST(SafetensorsTest, RejectsHeaderLengthPastEndOfFile) {
  TempDir dir;
  std::string bytes = ThreeTensors().Serialize();
  bytes.resize(40);  // header cut in the middle
  ExpectDataLoss(OpenBytes(dir, "cut.safetensors", bytes), "cut.safetensors",
                 {"runs past the end of the file"});
}

TEST(SafetensorsTest, RejectsHeaderLengthAboveLimit) {
  TempDir dir;
  std::string bytes = RawFile("{}", 0);
  const uint64_t huge = uint64_t{1} << 40;
  for (int i = 0; i < 8; ++i)
    bytes[static_cast<size_t>(i)] = static_cast<char>((huge >> (8 * i)) & 0xff);
  ExpectDataLoss(OpenBytes(dir, "huge.safetensors", bytes), "huge.safetensors",
                 {"exceeds the limit"});
}

TEST(SafetensorsTest, RejectsCorruptHeader) {
  TempDir dir;
  std::string bytes = ThreeTensors().Serialize();
  const size_t brace = bytes.find("\"shape\"");
  ASSERT_NE(brace, std::string::npos);
  bytes[brace] = '#';
  ExpectDataLoss(OpenBytes(dir, "json.safetensors", bytes), "json.safetensors",
                 {"invalid JSON header"});
  ExpectDataLoss(OpenBytes(dir, "array.safetensors", RawFile("[1, 2]  ", 0)), "array.safetensors",
                 {"does not start with '{'"});
  ExpectDataLoss(OpenBytes(dir, "dup.safetensors",
                           RawFile(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                   R"("x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                   8)),
                 "dup.safetensors", {"'x'", "twice"});
  ExpectDataLoss(OpenBytes(dir, "meta.safetensors", RawFile(R"({"__metadata__":{"a":1}})", 0)),
                 "meta.safetensors", {"__metadata__", "not a string"});
  ExpectDataLoss(
      OpenBytes(dir, "field.safetensors",
                RawFile(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"y":1}})", 4)),
      "field.safetensors", {"'x'", "unexpected field 'y'"});
}

TEST(SafetensorsTest, RejectsOverlappingOffsets) {
  TempDir dir;
  ExpectDataLoss(OpenBytes(dir, "overlap.safetensors",
                           RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                   12)),
                 "overlap.safetensors", {"'b'", "overlap tensor 'a'"});
}

TEST(SafetensorsTest, RejectsGapsAndTrailingBytes) {
  TempDir dir;
  ExpectDataLoss(OpenBytes(dir, "gap.safetensors",
                           RawFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                   R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                   12)),
                 "gap.safetensors", {"'b'", "gap of 4 bytes"});
  ExpectDataLoss(OpenBytes(dir, "start.safetensors",
                           RawFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)),
                 "start.safetensors", {"'a'", "gap"});
  ExpectDataLoss(OpenBytes(dir, "trail.safetensors",
                           RawFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 9)),
                 "trail.safetensors", {"trailing bytes"});
}

TEST(SafetensorsTest, RejectsByteSizeNotMatchingDtypeTimesShape) {
  TempDir dir;
  ExpectDataLoss(
      OpenBytes(dir, "size.safetensors",
                RawFile(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]}})", 8)),
      "size.safetensors", {"'w'", "byte size 8", "BF16", "12 bytes"});
  ExpectDataLoss(OpenBytes(dir, "back.safetensors",
                           RawFile(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4)),
                 "back.safetensors", {"'w'", "end before they begin"});
}

TEST(SafetensorsTest, RejectsUnknownDtypeAndBadShapes) {
  TempDir dir;
  ExpectDataLoss(OpenBytes(dir, "dtype.safetensors",
                           RawFile(R"({"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1)),
                 "dtype.safetensors", {"'w'", "unknown dtype 'F4'"});
  ExpectDataLoss(
      OpenBytes(dir, "neg.safetensors",
                RawFile(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4)),
      "neg.safetensors", {"'w'", "negative"});
  ExpectDataLoss(
      OpenBytes(dir, "float.safetensors",
                RawFile(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4)),
      "float.safetensors", {"'w'", "non-integer"});
  ExpectDataLoss(OpenBytes(dir, "overflow.safetensors",
                           RawFile(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],)"
                                   R"("data_offsets":[0,4]}})",
                                   4)),
                 "overflow.safetensors", {"'w'", "overflows"});
  ExpectDataLoss(OpenBytes(dir, "noshape.safetensors",
                           RawFile(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4)),
                 "noshape.safetensors", {"'w'", "shape"});
}

TEST(SafetensorsTest, RejectsMisalignedData) {
  TempDir dir;
  // 8 + 63-byte header: the F32 data would start at file offset 71.
  std::string header = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  header.resize(63, ' ');
  ExpectDataLoss(OpenBytes(dir, "align.safetensors", RawFile(header, 4, /*pad=*/false)),
                 "align.safetensors", {"'w'", "not aligned"});
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  auto f = SafetensorsFile::Open("/nonexistent/dir/model.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(f.status().message().find("/nonexistent/dir/model.safetensors"),
            absl::string_view::npos);
}

TEST(SafetensorsWriterTest, RejectsInconsistentTensors) {
  SafetensorsWriter w;
  float x[4] = {};
  EXPECT_FALSE(w.Add("x", DType::kF32, {2, 3}, x, sizeof(x)).ok());
  EXPECT_TRUE(w.Add("x", DType::kF32, {4}, x, sizeof(x)).ok());
  EXPECT_FALSE(w.Add("x", DType::kF32, {4}, x, sizeof(x)).ok());
  EXPECT_FALSE(w.Add("__metadata__", DType::kF32, {4}, x, sizeof(x)).ok());
  EXPECT_FALSE(w.Add("", DType::kF32, {4}, x, sizeof(x)).ok());
  EXPECT_FALSE(w.AddGenerated("y", DType::kF32, {-1}, [](void*, size_t) {}).ok());
}

TEST(SafetensorsWriterTest, WriteMatchesSerialize) {
  TempDir dir;
  SafetensorsWriter w = ThreeTensors();
  const std::string path = JoinPath(dir.path(), "w.safetensors");
  ASSERT_TRUE(w.Write(path).ok());
  const std::string written = ::moe::testing::ReadFile(path);
  EXPECT_EQ(written, w.Serialize());
  EXPECT_EQ(static_cast<int64_t>(written.size()), w.FileSize());
  EXPECT_FALSE(w.Write(JoinPath(dir.path(), "no/such/dir/x.safetensors")).ok());
}

}  // namespace
}  // namespace moe::store
