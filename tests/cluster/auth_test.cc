#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "cluster/auth.h"

namespace cairn {
namespace {

const std::string kAdmin = "a-long-admin-token-0123456789";
const std::string kClient = "a-long-client-token-0123456789";

TEST(TokenStore, ParsesRolesCommentsAndBlankLines) {
  auto store = TokenStore::parse("# tokens\n\nadmin " + kAdmin + "  # ops team\nclient " + kClient + "\n", "tokens");
  ASSERT_TRUE(store.ok()) << store.status().to_string();
  EXPECT_EQ(store->authenticate(kAdmin), Role::admin);
  EXPECT_EQ(store->authenticate(kClient), Role::client);
  EXPECT_EQ(store->authenticate(""), Role::none);
  EXPECT_EQ(store->authenticate(kAdmin.substr(0, kAdmin.size() - 1)), Role::none);
  EXPECT_EQ(store->authenticate(kAdmin + "x"), Role::none);
  EXPECT_EQ(store->first_token(Role::client), kClient);
}

TEST(TokenStore, ErrorsNameTheLineButNeverTheToken) {
  auto bad_role = TokenStore::parse("root " + kAdmin + "\n", "t.txt");
  ASSERT_FALSE(bad_role.ok());
  EXPECT_EQ(bad_role.status().message(), "t.txt:1: unknown role \"root\" (allowed: admin, client)");
  EXPECT_EQ(bad_role.status().message().find(kAdmin), std::string::npos);

  auto short_token = TokenStore::parse("admin " + kAdmin + "\nclient short\n", "t.txt");
  ASSERT_FALSE(short_token.ok());
  EXPECT_NE(short_token.status().message().find("t.txt:2: token is too short"), std::string::npos);
  EXPECT_EQ(short_token.status().message().find("short\""), std::string::npos);

  EXPECT_FALSE(TokenStore::parse("admin\n", "t").ok());
  EXPECT_FALSE(TokenStore::parse("admin a b\n", "t").ok());
  EXPECT_FALSE(TokenStore::parse("# nothing\n", "t").ok());
}

TEST(TokenStore, CreatesAPrivateFileOnceWithBothRoles) {
  auto dir = std::filesystem::temp_directory_path() / ("cairn-auth-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  auto path = (dir / "sub" / "tokens").string();
  auto created = TokenStore::create_if_missing(path);
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  EXPECT_TRUE(*created);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto store = TokenStore::load(path);
  ASSERT_TRUE(store.ok());
  std::string admin = store->first_token(Role::admin);
  EXPECT_EQ(admin.size(), 64u);
  EXPECT_EQ(store->authenticate(store->first_token(Role::client)), Role::client);
  auto again = TokenStore::create_if_missing(path);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
  EXPECT_EQ(TokenStore::load(path)->first_token(Role::admin), admin) << "an existing file is never replaced";
  std::filesystem::remove_all(dir);
}

TEST(TokenStore, GeneratedTokensDiffer) { EXPECT_NE(generate_token(), generate_token()); }

}  // namespace
}  // namespace cairn
