//! Property tests of the agent's pure logic: input parsing, the plan, subnet leasing.

mod input;
mod plan;
mod subnet;
