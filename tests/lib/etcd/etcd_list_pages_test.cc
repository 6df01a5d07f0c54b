// EtcdStateStore::List over more data than one gRPC message may carry: a
// prefix of a few thousand ~2 KiB records (more than gRPC's default 4 MiB
// receive limit in one Range answer) lists whole, in pages that all read one
// revision, so the listing stays consistent while other clients write; a
// caller's limit is honoured across pages; a listing at an explicit past
// revision pages at that revision.
//
// Against a private etcd (tests/support/private_etcd.h); skips loudly without
// the etcd binary.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "etcd/etcd_state_store.h"
#include "support/private_etcd.h"

namespace kmosix::testing {
namespace {

#define SKIP_WITHOUT_ETCD()                          \
  do {                                               \
    if (auto why = EtcdSkipReason(); !why.empty()) { \
      GTEST_SKIP() << "ETCD TEST SKIPPED: " << why;  \
    }                                                \
  } while (0)

constexpr size_t kValueBytes = 2048;

std::string Value(const std::string& key) {
  std::string v = key + ":";
  while (v.size() < kValueBytes) v += static_cast<char>('a' + v.size() % 26);
  return v;
}

std::string Num(int i) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%06d", i);
  return buf;
}

class EtcdListPagesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdSkipReason().empty()) return;
    etcd_ = std::make_unique<PrivateEtcd>();
    ASSERT_TRUE(etcd_->Start()) << "log: " << etcd_->dir() << "/etcd.log";
    store_ = std::make_unique<EtcdStateStore>(TestEtcdConfig(etcd_->endpoint()));
  }

  // Writes `keys` (value: Value(key)) in transactions of 100 puts.
  void PutAll(const std::vector<std::string>& keys) {
    for (size_t i = 0; i < keys.size(); i += 100) {
      Txn txn;
      for (size_t j = i; j < std::min(keys.size(), i + 100); ++j)
        txn.then_ops.push_back(TxnOp::Put(keys[j], Value(keys[j])));
      auto r = store_->Commit(txn);
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      ASSERT_TRUE(r->succeeded);
    }
  }

  std::unique_ptr<PrivateEtcd> etcd_;
  std::unique_ptr<EtcdStateStore> store_;
};

TEST_F(EtcdListPagesTest, ListsMoreThanOneGrpcMessageHolds) {
  SKIP_WITHOUT_ETCD();
  std::vector<std::string> keys;
  for (int i = 0; i < 3000; ++i) keys.push_back("/kmx/migrations/m" + Num(i));
  ASSERT_NO_FATAL_FAILURE(PutAll(keys));
  ASSERT_TRUE(store_->Put("/kmx/other", "outside the prefix").ok());
  // 3000 x 2 KiB: about 6 MiB, over gRPC's default 4 MiB receive limit.
  auto listed = store_->List("/kmx/migrations/");
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->kvs.size(), keys.size());
  EXPECT_FALSE(listed->more);
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_EQ(listed->kvs[i].key, keys[i]);
    ASSERT_EQ(listed->kvs[i].value, Value(keys[i]));
  }
  auto head = store_->Get("/kmx/other");
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(listed->revision, head->revision);

  // The whole key space too ("" lists every key).
  auto every = store_->List("");
  ASSERT_TRUE(every.ok()) << every.status().ToString();
  EXPECT_EQ(every->kvs.size(), keys.size() + 1);
}

// Pages too big for the receive limit are asked again with fewer keys.
TEST_F(EtcdListPagesTest, PageOverTheReceiveLimitIsSplit) {
  SKIP_WITHOUT_ETCD();
  std::vector<std::string> keys;
  for (int i = 0; i < 3000; ++i) keys.push_back("/kmx/w/" + Num(i));
  ASSERT_NO_FATAL_FAILURE(PutAll(keys));
  EtcdConfig cfg = TestEtcdConfig(etcd_->endpoint());
  cfg.list_page_limit = 5000;               // every key in one page...
  cfg.max_receive_bytes = 4 * 1024 * 1024;  // ...which gRPC's default refuses
  EtcdStateStore store(cfg);
  auto listed = store.List("/kmx/w/");
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->kvs.size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) ASSERT_EQ(listed->kvs[i].key, keys[i]);
}

TEST_F(EtcdListPagesTest, LimitIsHonouredAcrossPages) {
  SKIP_WITHOUT_ETCD();
  std::vector<std::string> keys;
  for (int i = 0; i < 2500; ++i) keys.push_back("/kmx/w/" + Num(i));
  ASSERT_NO_FATAL_FAILURE(PutAll(keys));
  ListOptions o;
  o.limit = 2100;  // ~4.2 MiB: over the receive limit in one answer
  auto listed = store_->List("/kmx/w/", o);
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->kvs.size(), 2100u);
  EXPECT_TRUE(listed->more);
  EXPECT_EQ(listed->kvs.back().key, keys[2099]);
  o.limit = 2500;
  listed = store_->List("/kmx/w/", o);
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  EXPECT_EQ(listed->kvs.size(), 2500u);
  EXPECT_FALSE(listed->more);
}

TEST_F(EtcdListPagesTest, PastRevisionListsThatRevisionAcrossPages) {
  SKIP_WITHOUT_ETCD();
  std::vector<std::string> keys;
  for (int i = 0; i < 2400; ++i) keys.push_back("/kmx/w/" + Num(i));
  ASSERT_NO_FATAL_FAILURE(PutAll(keys));
  auto then = store_->Get("/kmx/w/" + Num(0));
  ASSERT_TRUE(then.ok());
  // Later: the last keys change, some go, new ones come.
  for (int i = 2300; i < 2400; ++i) ASSERT_TRUE(store_->Put(keys[i], "changed").ok());
  ASSERT_TRUE(store_->Delete(keys[10]).ok());
  ASSERT_TRUE(store_->Put("/kmx/w/zzz", "new").ok());
  ListOptions o;
  o.revision = then->revision;
  auto listed = store_->List("/kmx/w/", o);
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->kvs.size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_EQ(listed->kvs[i].key, keys[i]);
    ASSERT_EQ(listed->kvs[i].value, Value(keys[i]));
  }
}

// Pairs written in one transaction each, at both ends of the prefix: "a/<n>"
// lands on the first pages, "z/<n>" on the last ones. A listing made of pages
// read at different revisions would hold z keys whose a key it missed.
TEST_F(EtcdListPagesTest, PagesReadOneRevisionWhileOthersWrite) {
  SKIP_WITHOUT_ETCD();
  std::vector<std::string> keys;
  for (int i = 0; i < 1500; ++i) {
    keys.push_back("/kmx/p/a/" + Num(i));
    keys.push_back("/kmx/p/z/" + Num(i));
  }
  // Pairs go in whole: sort into transactions of 50 pairs.
  for (size_t i = 0; i < keys.size(); i += 100) {
    Txn txn;
    for (size_t j = i; j < i + 100; ++j)
      txn.then_ops.push_back(TxnOp::Put(keys[j], Value(keys[j])));
    auto r = store_->Commit(txn);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }

  // Small pages: each listing is 30 Range calls while the writer writes.
  EtcdConfig small = TestEtcdConfig(etcd_->endpoint());
  small.list_page_limit = 100;
  EtcdStateStore reader(small);
  EtcdStateStore writer_store(TestEtcdConfig(etcd_->endpoint()));
  std::atomic<bool> stop{false};
  std::atomic<int> written{0};
  std::thread writer([&] {
    for (int n = 1500; !stop; ++n) {
      Txn txn;
      txn.then_ops.push_back(TxnOp::Put("/kmx/p/a/" + Num(n), "x"));
      txn.then_ops.push_back(TxnOp::Put("/kmx/p/z/" + Num(n), "x"));
      // And one old pair goes, also whole.
      txn.then_ops.push_back(TxnOp::Delete("/kmx/p/a/" + Num(n - 1500)));
      txn.then_ops.push_back(TxnOp::Delete("/kmx/p/z/" + Num(n - 1500)));
      if (writer_store.Commit(txn).ok()) ++written;
    }
  });
  int inconsistent = 0;
  int lists = 0;
  Status failed;
  for (; lists < 8 || (written < 20 && lists < 200); ++lists) {
    auto listed = reader.List("/kmx/p/");
    if (!listed.ok()) {
      failed = listed.status();
      break;
    }
    std::set<std::string> a, z;
    for (const auto& kv : listed->kvs) {
      EXPECT_LE(kv.mod_revision, listed->revision) << kv.key;
      const std::string rest = kv.key.substr(std::string("/kmx/p/").size());
      (rest[0] == 'a' ? a : z).insert(rest.substr(2));
    }
    if (a != z) ++inconsistent;
    EXPECT_EQ(a.size(), 1500u);
  }
  stop = true;
  writer.join();
  ASSERT_TRUE(failed.ok()) << failed.ToString();
  EXPECT_GT(written.load(), 0) << "the writer never wrote during the listings";
  EXPECT_EQ(inconsistent, 0) << "of " << lists << " listings";
}

}  // namespace
}  // namespace kmosix::testing
