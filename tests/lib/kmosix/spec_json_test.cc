// Strict JSON parsing shared by every request-body parser: a body whose
// objects repeat a key is refused rather than silently keeping the last value.
#include "kmosix/spec_json.h"

#include <gtest/gtest.h>

namespace kmosix {
namespace {

TEST(ParseJsonObjectTest, RepeatedTopLevelKeyIsInvalidAndNamed) {
  auto j = ParseJsonObject(R"({"name":"a","image":"i","name":"b"})");
  ASSERT_EQ(j.status().code(), Code::kInvalid);
  EXPECT_NE(j.status().message().find("duplicate key \"name\""), std::string::npos)
      << j.status().ToString();
}

TEST(ParseJsonObjectTest, RepeatedKeyInANestedObjectIsInvalid) {
  auto j = ParseJsonObject(R"({"spec":{"env":{"A":"1","A":"2"}}})");
  ASSERT_EQ(j.status().code(), Code::kInvalid);
  EXPECT_NE(j.status().message().find("\"A\""), std::string::npos) << j.status().ToString();
}

TEST(ParseJsonObjectTest, SameKeyInSiblingObjectsIsFine) {
  auto j = ParseJsonObject(R"({"a":{"k":1},"b":{"k":2},"l":[{"k":3},{"k":4}],"k":5})");
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ((*j)["b"]["k"], 2);
  EXPECT_EQ((*j)["l"][1]["k"], 4);
  EXPECT_EQ((*j)["k"], 5);
}

TEST(ParseJsonObjectTest, NotJsonOrNotAnObjectStaysInvalid) {
  EXPECT_EQ(ParseJsonObject("{").status().code(), Code::kInvalid);
  EXPECT_EQ(ParseJsonObject("[1]").status().code(), Code::kInvalid);
  EXPECT_EQ(ParseJsonObject("").status().code(), Code::kInvalid);
}

TEST(ParseJsonObjectTest, ContainerSpecWithARepeatedFieldIsRefused) {
  auto spec = ParseContainerSpec(R"({"name":"w","image":"i","image":"j"})");
  EXPECT_EQ(spec.status().code(), Code::kInvalid) << spec.status().ToString();
}

TEST(MigrationOfferTest, MemoryBytesRoundTripsAndIsOptional) {
  const std::string base =
      R"({"id":"m-1","sourceNode":"node1","sourceUrl":"http://a","spec":{"name":"w","image":"i"})";
  auto none = ParseMigrationOffer(base + "}");
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_EQ(none->memory_bytes, 0u);

  auto some = ParseMigrationOffer(base + R"(,"memoryBytes":1073741824})");
  ASSERT_TRUE(some.ok()) << some.status().ToString();
  EXPECT_EQ(some->memory_bytes, uint64_t{1} << 30);
  auto again = ParseMigrationOffer(MigrationOfferToJson(*some).dump());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->memory_bytes, uint64_t{1} << 30);
  EXPECT_TRUE(ParseMigrationOffer(base + R"(,"memoryBytes":1125899906842624})").ok());  // 2^50
}

// nlohmann reads -0 as a signed integer; it is 0 all the same, and the
// canonical form ("memoryBytes":0) gets the same verdict (found by
// spec_json_fuzz, corpus/spec_json/offer-memory-bytes-minus-zero).
TEST(MigrationOfferTest, MinusZeroIsZero) {
  const std::string base =
      R"({"id":"m-1","sourceNode":"node1","sourceUrl":"http://a","spec":{"name":"w","image":"i"})";
  auto offer = ParseMigrationOffer(base + R"(,"memoryBytes":-0,"stream":{"files":-0,"bytes":7}})");
  ASSERT_TRUE(offer.ok()) << offer.status().ToString();
  EXPECT_EQ(offer->memory_bytes, 0u);
  EXPECT_EQ(offer->stream.files, 0u);
  EXPECT_EQ(offer->stream.bytes, 7u);
  auto again = ParseMigrationOffer(MigrationOfferToJson(*offer).dump());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->memory_bytes, 0u);
  EXPECT_EQ(again->stream.bytes, 7u);
}

TEST(MigrationOfferTest, BadMemoryBytesIsInvalidAndNamed) {
  const std::string base =
      R"({"id":"m-1","sourceNode":"node1","sourceUrl":"http://a","spec":{"name":"w","image":"i"},"memoryBytes":)";
  for (const char* bad :
       {"-1", "1.5", "\"1\"", "null", "1125899906842625", "18446744073709551616"}) {
    auto offer = ParseMigrationOffer(base + bad + "}");
    ASSERT_EQ(offer.status().code(), Code::kInvalid) << bad;
    EXPECT_NE(offer.status().message().find("memoryBytes"), std::string::npos)
        << offer.status().ToString();
  }
}

}  // namespace
}  // namespace kmosix
