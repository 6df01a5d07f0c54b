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

}  // namespace
}  // namespace kmosix
