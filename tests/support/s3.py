"""An S3 client that is not ours (boto3), for the end-to-end tests:
reads back what tes wrote, and makes the faults tes must survive.

usage: s3.py ENDPOINT BUCKET mkbucket
       s3.py ENDPOINT BUCKET mkuser         -> {"id": …, "secret": …}
       s3.py ENDPOINT BUCKET ls PREFIX      -> one JSON object per line
       s3.py ENDPOINT BUCKET put KEY BODY [EXPIRY]
       s3.py ENDPOINT BUCKET delete KEY
Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment.
"""
import json
import sys

import boto3
import botocore.exceptions


def main():
    endpoint, bucket, verb, *rest = sys.argv[1:]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if verb == "mkbucket":
        s3.create_bucket(Bucket=bucket)
    elif verb == "mkuser":
        # On a server started with INITIAL_NO_AUTH_ACTION_COUNT=4: these four
        # calls are the last unauthenticated ones; prints the new user's keys.
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        iam.create_user(UserName="tes")
        key = iam.create_access_key(UserName="tes")["AccessKey"]
        iam.put_user_policy(UserName="tes", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }))
        s3.create_bucket(Bucket=bucket)
        print(json.dumps({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))
    elif verb == "ls":
        (prefix,) = rest
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for o in page.get("Contents", []):
                try:
                    head = s3.head_object(Bucket=bucket, Key=o["Key"])
                    body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                except botocore.exceptions.ClientError as e:
                    if e.response["Error"]["Code"] in ("404", "NoSuchKey"):
                        continue  # moved while we listed (an archive pass is running)
                    raise
                print(json.dumps({
                    "key": o["Key"],
                    "size": o["Size"],
                    # ListObjectsV2 reports the class; HEAD omits STANDARD.
                    "storageClass": o.get("StorageClass", "STANDARD"),
                    "headStorageClass": head.get("StorageClass", "STANDARD"),
                    "metadata": head.get("Metadata", {}),
                    "body": body.decode("utf-8", "replace"),
                }))
    elif verb == "put":
        key, body, *expiry = rest
        meta = {"keyVersion": key.split("/")[1]}
        if expiry:
            meta["expiry"] = expiry[0]
        s3.put_object(Bucket=bucket, Key=key, Body=body.encode(), Metadata=meta)
    elif verb == "delete":
        (key,) = rest
        s3.delete_object(Bucket=bucket, Key=key)
    else:
        sys.exit(f"unknown verb {verb}")


main()
