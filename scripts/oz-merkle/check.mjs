// Checks gpumesh reward roots and proofs with OpenZeppelin's StandardMerkleTree, the
// library an EVM cumulative distributor's tooling would use.
//
// stdin: { "root": "0x…", "values": [["0xaddress", "amount"], …],
//          "proofs": [{ "account": "0x…", "cumulative": "amount", "leaf": "0x…", "proof": ["0x…", …] }] }
// Amounts are decimal strings of base units. Prints one JSON line; exits 1 on a mismatch.
import { StandardMerkleTree } from "@openzeppelin/merkle-tree";
import { readFileSync } from "node:fs";

const input = JSON.parse(readFileSync(0, "utf8"));
const encoding = ["address", "uint256"];
const problems = [];

const tree = StandardMerkleTree.of(input.values, encoding);
if (tree.root.toLowerCase() !== input.root.toLowerCase()) {
  problems.push(`root: OpenZeppelin builds ${tree.root}, gpumesh says ${input.root}`);
}
for (const p of input.proofs) {
  const value = [p.account, p.cumulative];
  if (!StandardMerkleTree.verify(input.root, encoding, value, p.proof)) {
    problems.push(`proof of ${p.account} does not verify against the root`);
  }
  const leaf = tree.leafHash(value);
  if (leaf.toLowerCase() !== p.leaf.toLowerCase()) {
    problems.push(`leaf of ${p.account}: OpenZeppelin hashes ${leaf}, gpumesh says ${p.leaf}`);
  }
}
console.log(JSON.stringify({ ok: problems.length === 0, leaves: input.values.length, proofs: input.proofs.length, problems }));
process.exit(problems.length === 0 ? 0 : 1);
