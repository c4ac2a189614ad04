// SPDX-License-Identifier: GPL-2.0
/*
 * The uAPI is a contract with binaries already built: these tests pin the
 * layout of every struct and every ioctl number, so a change that would
 * break old userspace fails here before it ships.  (The header compiling
 * standalone is checked by building this file: it includes nothing of ours
 * before <linux/ferry.h>.)
 */
#include <linux/ferry.h>
#include <stddef.h>
#include <sys/ioctl.h>

#include "kselftest_harness.h"

TEST(struct_sizes_are_fixed)
{
	EXPECT_EQ(32, sizeof(struct ferry_version));
	EXPECT_EQ(32, sizeof(struct ferry_create));
	EXPECT_EQ(16, sizeof(struct ferry_grant));
	EXPECT_EQ(16, sizeof(struct ferry_revoke));
	EXPECT_EQ(40, sizeof(struct ferry_info));
	EXPECT_EQ(8, sizeof(struct ferry_destroy));
}

/* 64-bit fields on 8-byte boundaries: same layout for 32-bit callers. */
TEST(u64_fields_are_naturally_aligned)
{
	EXPECT_EQ(8, offsetof(struct ferry_version, features));
	EXPECT_EQ(16, offsetof(struct ferry_version, max_regions));
	EXPECT_EQ(24, offsetof(struct ferry_version, max_bytes));
	EXPECT_EQ(8, offsetof(struct ferry_create, size));
	EXPECT_EQ(20, offsetof(struct ferry_create, pad));
	EXPECT_EQ(24, offsetof(struct ferry_create, mmap_offset));
	EXPECT_EQ(8, offsetof(struct ferry_info, size));
	EXPECT_EQ(16, offsetof(struct ferry_info, mmap_offset));
	EXPECT_EQ(36, offsetof(struct ferry_info, nr_maps));
}

TEST(ioctl_numbers_are_stable)
{
	EXPECT_EQ(0xF7, _IOC_TYPE(FERRY_IOC_VERSION));
	EXPECT_EQ(0, _IOC_NR(FERRY_IOC_VERSION));
	EXPECT_EQ(1, _IOC_NR(FERRY_IOC_CREATE));
	EXPECT_EQ(2, _IOC_NR(FERRY_IOC_GRANT));
	EXPECT_EQ(3, _IOC_NR(FERRY_IOC_REVOKE));
	EXPECT_EQ(4, _IOC_NR(FERRY_IOC_INFO));
	EXPECT_EQ(5, _IOC_NR(FERRY_IOC_DESTROY));
	EXPECT_EQ(_IOC_READ | _IOC_WRITE, _IOC_DIR(FERRY_IOC_CREATE));
	EXPECT_EQ(_IOC_WRITE, _IOC_DIR(FERRY_IOC_GRANT));
	EXPECT_EQ(sizeof(struct ferry_info), _IOC_SIZE(FERRY_IOC_INFO));
}

TEST(rights_and_features)
{
	EXPECT_EQ(1, FERRY_ABI_VERSION);
	EXPECT_EQ(7, FERRY_RIGHTS_ALL);
	EXPECT_EQ(0, FERRY_RIGHT_READ & FERRY_RIGHT_WRITE);
	EXPECT_EQ(0, (FERRY_RIGHT_READ | FERRY_RIGHT_WRITE) & FERRY_RIGHT_PIN);
	/* Feature bits are ABI: values never change once released. */
	EXPECT_EQ(1ULL << 4, FERRY_FEAT_PIN);
	EXPECT_EQ(1ULL << 5, FERRY_FEAT_USER_LIMITS);
	EXPECT_EQ(1ULL << 6, FERRY_FEAT_EXEC_ENDS);
	EXPECT_EQ(1ULL << 7, FERRY_FEAT_SEAL_WRITES);
	EXPECT_EQ(1ULL << 40, FERRY_REGION_MAX_SIZE);
}

TEST_HARNESS_MAIN
